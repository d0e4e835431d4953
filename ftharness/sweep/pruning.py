"""A trial's side of its Optuna study: pruning from inside training, and its curves written into the study.

The job loads the study with the pruner from the sweeper's config (the pruner is not stored), wraps its trial
by id (ftharness/sweep/trial.py `job_trial`: any Hydra app's `trial.report` loads it so too), reports its evidence
(the eval loss at each eval step, or the loss of the training batches it has not seen before) and stops training
when the pruner says so. This works whichever process or machine runs the job, as long as the storage is shared.
The job also writes its curves into the study as it runs (`StudyRecorder`) and the host it runs on, so that the
report of a study whose trials ran on several machines draws every trial from the storage alone
(ftharness/report/runs.py).
"""

import json
from typing import Any, List, Optional, Tuple

import optuna
from omegaconf import DictConfig
from transformers import TrainerCallback

from ftharness.contract import TRAIN_CURVES, Status, TrialAttr
from ftharness.sweep.optuna_objects import make_pruner
from ftharness.sweep.trial import StudyLink, finite_or_worst, job_trial, pruning_reason

MAX_CURVE_CHARS = 60_000  # MySQL's TEXT column holds 64 KB (SQLite's and PostgreSQL's have no limit)


class PruningCallback(TrainerCallback):
    """Reports the trial's evidence to its study and stops training when the pruner says so.

    `eval_loss`: the loss of each periodic evaluation (not those before and after training). `train_loss`: every
    `report_steps` optimizer steps, the mean loss of their batches, each computed before its own update. While
    no training row repeats (the first epoch) that is a held-out loss at no cost, on the same rows in the same
    order for every trial of the same seed; later epochs report nothing (the rows were trained on).
    The value is negated for a maximizing study, so that the pruner compares trials in the study's direction.
    `spec` is `hydra.sweeper.pruner`: once the Trainer knows the trial's steps, its `warmup` share becomes steps.
    """

    def __init__(self, trial: optuna.trial.Trial, sign: float, spec: DictConfig, link: Optional[StudyLink] = None):
        self.trial, self.sign, self.spec = trial, sign, spec
        self.link = link or StudyLink()
        self.evidence, self.report_steps = spec.evidence, spec.report_steps
        self.status: Optional[Status] = None
        self.reason: Optional[str] = None
        self._training = False
        self._losses: List[float] = []
        self._reported_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        if self.spec.get("warmup") is not None:  # a share of the steps: known now, from max_steps or the epochs
            self.trial.study.pruner = make_pruner(self.spec, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.evidence != "train_loss" or loss is None or (state.epoch or 0) > 1:
            return
        self._losses.append(float(loss))
        if state.global_step - self._reported_step >= self.report_steps:
            self._report(sum(self._losses) / len(self._losses), state, control)
            self._losses, self._reported_step = [], state.global_step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if self.evidence == "eval_loss" and self._training and loss is not None:
            self._report(loss, state, control)

    def _report(self, loss: float, state, control) -> None:
        step = state.global_step
        self.link.call(self.trial.report, finite_or_worst(self.sign * loss, self.trial.study), step)
        # stopping after the last step saves nothing
        if step < state.max_steps and self.link.call(self.trial.should_prune):
            self.status = Status.PRUNED
            self.reason = pruning_reason(self.trial, self.spec, step, self.evidence, loss, self.sign)
            control.should_training_stop = True


def thin_curve(points: List[List[float]], max_chars: int = MAX_CURVE_CHARS) -> List[List[float]]:
    """Every k-th point (and the last) when the series' JSON would not fit one attribute of every RDB."""
    stride = 1
    while len(json.dumps(points[::stride])) > max_chars:
        stride *= 2
    return points if stride == 1 else points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


class StudyRecorder(TrainerCallback):
    """Writes the trial's curves (train loss, grad_norm, learning rate, eval loss per step) into its study at
    each evaluation and when training ends: the study then holds what the report draws, wherever the job ran."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, link: Optional[StudyLink] = None):
        self.storage, self.trial_id = storage, trial_id
        self.link = link or StudyLink()
        self.curves: dict = {name: [] for name in (*TRAIN_CURVES, "eval_loss")}
        self._changed: set = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        names = TRAIN_CURVES if "loss" in logs else ("eval_loss",) if "eval_loss" in logs else ()
        for name in names:
            if logs.get(name) is not None:
                self.curves[name].append([state.global_step, float(logs[name])])
                self._changed.add(name)

    def on_evaluate(self, args, state, control, **kwargs):
        self.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()

    def flush(self) -> None:
        for name in sorted(self._changed):
            self.link.call(self.storage.set_trial_user_attr, self.trial_id, TrialAttr.CURVE + name,
                           thin_curve(self.curves[name]))
        self._changed.clear()


def trial_hooks(hydra_cfg: DictConfig) -> Tuple[List[Any], List[str]]:
    """(trainer callbacks, tracker tags) for this job when the sweeper launched it: its curves recorded into
    the study, pruning, study tags."""
    trial = job_trial(hydra_cfg)
    if trial is None:
        return [], []
    study = trial.study
    tags = [f"study:{study.study_name}", f"trial:{trial.number}"]
    link = StudyLink()  # one for both callbacks: a storage that stops answering is said once
    recorder = StudyRecorder(study._storage, trial._trial_id, link)
    if TrialAttr.CONFIRMS in trial.user_attrs:  # a confirmation runs to its end (ftharness/sweep/confirmation.py)
        return [recorder], [*tags, f"confirms:{trial.user_attrs[TrialAttr.CONFIRMS]}"]
    if len(study.directions) > 1:  # Optuna cannot prune multi-objective trials
        return [recorder], tags
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    return [recorder, PruningCallback(trial, sign, hydra_cfg.sweeper.pruner, link)], tags
