"""The running trial of a sweep, for any Hydra app: report a value at a step, and stop when the study's pruner says so.

    from ftharness.sweep import trial

    for step in range(cfg.steps):
        loss = train_one_step()
        trial.report(loss, step)  # raises optuna.TrialPruned when the study's pruner stops this trial

Outside a sweep of the ftharness sweeper (a single run, another sweeper) `report` does nothing, so the same app runs
either way. The job finds its study and trial in the environment the sweeper gives each job (ftharness/contract.py)
and its pruner in its own `hydra.sweeper` config: it works in the sweeper's process (Hydra's basic launcher), in
joblib's workers and in submitit jobs alike, wherever the study's storage is shared. TrialPruned ends the task
function; the sweeper tells the study the trial was pruned, with the reason the exception carries, as it tells
ftharness's own pruned trials (ftharness/sweep/telling.py).

ftharness's trials report through the same pieces from inside their Trainer (ftharness/sweep/pruning.py): the study
loaded in the job (`job_trial`), a storage that stops answering said once (`StudyLink`), and the pruner's reason
(`pruning_reason`). This module imports neither torch nor transformers: a plain app pays for Optuna alone.
"""

import logging
import math
import os
import socket
from typing import Any, Optional, Tuple

import numpy as np
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from optuna.trial import TrialState

from ftharness.contract import STORAGE_ENV, STUDY_ENV, TRIAL_ENV, TrialAttr
from ftharness.sweep.optuna_objects import STORAGE_ERRORS, make_pruner, open_storage

__all__ = ["report"]  # what an app calls; the rest serves ftharness/sweep/pruning.py

log = logging.getLogger(__name__)


class StudyLink:
    """The job's calls into its study from inside training. A storage that stops answering (a database server
    going down) must not end a trial that trains well: the first error is said once, later calls are skipped, and
    the trial trains on without pruning or stored curves; its summary.json (or its return value) then tells the sweep
    its result (ftharness/sweep/heartbeats.py `StaleTrials`)."""

    def __init__(self):
        self.lost = False

    def call(self, method, *args) -> Any:
        """`method(*args)`, or None once the storage stopped answering."""
        if self.lost:
            return None
        try:
            return method(*args)
        except STORAGE_ERRORS as error:
            self.lost = True
            cause = str(error.__cause__ or error).strip().splitlines()[0][:200]
            log.warning("the study's storage stopped answering (%s): this trial trains on without pruning, and "
                        "the sweep reads its result from its folder", cause)
            return None


def job_trial(hydra_cfg: DictConfig) -> Optional[optuna.trial.Trial]:
    """The study's trial that this job runs, its study loaded with the pruner of the job's `hydra.sweeper` (Optuna
    stores no pruner); None when no ftharness sweeper launched the job (its sweeper may have no pruner then). Notes
    the host and GPUs the job runs on: its folder lies there."""
    trial_id = os.environ.get(TRIAL_ENV)
    if trial_id is None:
        return None
    study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=open_storage(os.environ[STORAGE_ENV]),
                              pruner=make_pruner(hydra_cfg.sweeper.pruner))
    trial = optuna.trial.Trial(study, int(trial_id))
    trial.set_user_attr(TrialAttr.HOST, socket.gethostname())
    trial.set_user_attr(TrialAttr.DEVICES, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return trial


def finite_or_worst(value: float, study: optuna.Study) -> float:
    """A report's value, or the worst one in the study's direction where it is not a number (a diverged loss)."""
    if math.isfinite(value):
        return value
    return math.inf if study.direction == optuna.study.StudyDirection.MINIMIZE else -math.inf


def pruning_reason(trial: optuna.trial.Trial, spec: DictConfig, step: int, what: str, value: float,
                   sign: float = 1.0) -> str:
    """`pruned at step 8 (eval_loss 2.31; the median of 5 completed trials at step 8: 1.97)`: the trial's evidence
    and what the pruner held it against. Median / percentile: that percentile of the completed trials' reports at the
    same step (Optuna compares the trial's best report so far with it). Successive halving: the trials that reached
    this step, of which the best 1/reduction_factor go on. `sign` undoes the negation of ftharness's losses in a
    maximizing study: the values shown are then losses, lower is better."""
    return f"pruned at step {step} ({what} {value:.4g}{_compared_with(trial, spec, step, sign)})"


def _compared_with(trial: optuna.trial.Trial, spec: DictConfig, step: int, sign: float) -> str:
    study = trial.study
    if spec.name == "successive_halving":
        reached = sum(step in t.intermediate_values for t in study.get_trials(deepcopy=False))
        factor = spec.options.get("reduction_factor", 4)
        return f"; not among the best 1/{factor} of the {reached} trials that reached step {step}"
    if spec.name not in ("median", "percentile"):
        return ""
    percentile = 50.0 if spec.name == "median" else float(spec.options.percentile)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = [sign * t.intermediate_values[step] for t in completed if step in t.intermediate_values]
    if not values:
        return ""
    higher_is_better = sign * (1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1) < 0
    label = "the median" if percentile == 50 else f"percentile {percentile:g}"
    return (f"; {label} of {len(values)} completed trials at step {step}: "
            f"{np.percentile(values, 100 - percentile if higher_is_better else percentile):.4g}")


_running: Optional[Tuple[str, Optional[optuna.trial.Trial], StudyLink]] = None  # the job this process runs now:
# (its trial id, its trial or None where it cannot be pruned, the link to its storage)


def report(value: float, step: int, total_steps: Optional[int] = None) -> None:
    """Report the trial's `value` of the study's objective at `step` (an int that grows: a step, an epoch) and raise
    optuna.TrialPruned when the study's pruner stops the trial. `total_steps`, the steps the trial will make, turns a
    `hydra.sweeper.pruner.warmup` given as a share of them into steps. Nothing happens outside an ftharness sweep, in
    a study of several objectives (Optuna cannot prune them) and in a confirmation (it runs to its end)."""
    trial, link = _running_trial()
    if trial is None:
        return
    spec = HydraConfig.get().sweeper.pruner
    if total_steps is not None and spec.get("warmup") is not None:
        trial.study.pruner = make_pruner(spec, total_steps)
    link.call(trial.report, finite_or_worst(float(value), trial.study), step)
    if link.call(trial.should_prune):
        raise optuna.TrialPruned(pruning_reason(trial, spec, step, (trial.study.metric_names or ["value"])[0], value))


def _running_trial() -> Tuple[Optional[optuna.trial.Trial], StudyLink]:
    """This job's trial where it can be pruned, loaded once per job (in-process launchers run several jobs in turn)."""
    global _running
    trial_id = os.environ.get(TRIAL_ENV)
    if trial_id is None:
        return None, StudyLink()
    if _running is None or _running[0] != trial_id:
        trial = job_trial(HydraConfig.get())
        if len(trial.study.directions) > 1:
            if _running is None:  # said once a process: its jobs are trials of one study
                log.warning("a study of several objectives cannot prune (Optuna's pruners compare one value): "
                            "trial.report records nothing")
            trial = None
        elif TrialAttr.CONFIRMS in trial.user_attrs:
            trial = None
        _running = (trial_id, trial, StudyLink())
    return _running[1], _running[2]
