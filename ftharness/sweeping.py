"""Optuna inside a trial, and the Optuna objects the sweeper and its jobs both build from the config.

A job of the ftharness sweeper finds its study and trial in environment variables that the sweeper sets per
job (`hydra.job.env_set`). It loads the study with the pruner from the sweeper's config (the pruner is not
stored), wraps its trial by id, reports the eval loss at each eval step and stops training when the pruner
says so. This works whichever process or machine runs the job, as long as the storage is shared.

The job also writes its curves into the study as it runs (`StudyRecorder`) and the host it runs on, so that the
report of a study whose trials ran on several machines draws every trial from the storage alone (ftharness/runs.py).
"""

import json
import logging
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

import optuna
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from ftharness.runs import CURVE_ATTR, TRAIN_CURVES  # the curves' format, as the report reads them

log = logging.getLogger(__name__)

STUDY_ENV = "FTHARNESS_STUDY"  # the study's name
STORAGE_ENV = "FTHARNESS_STORAGE"  # its storage URL (see open_storage)
TRIAL_ENV = "FTHARNESS_TRIAL_ID"  # the trial's id in the storage (not its number)
JOURNAL_PREFIX = "journal:"
MAX_CURVE_CHARS = 60_000  # MySQL's TEXT column holds 64 KB (SQLite's and PostgreSQL's have no limit)
STUDY_FILE = "study.json"  # written into a sweep folder: the study (name, storage) whose trials it ran


class SweepConfigError(CompactHydraException):
    """A wrong sweeper setting: Hydra prints it as one line, without a stack trace."""

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "qmc": optuna.samplers.QMCSampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


def resolve_storage(url: Optional[str], root: Path, study_name: str) -> str:
    """The storage URL as every job can use it: null becomes `outputs/studies/<study>.db`, and the paths of
    SQLite and journal files are made absolute (jobs may run in another directory)."""
    url = url or f"sqlite:///outputs/studies/{study_name}.db"
    for prefix in (JOURNAL_PREFIX, "sqlite:///"):
        if url.startswith(prefix):
            path = (root / url.removeprefix(prefix)).resolve()  # an absolute path stays as it is
            path.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(path)
    return url


def open_storage(url: str, heartbeat_interval: Optional[int] = None, grace_period: Optional[int] = None,
                 max_retry: Optional[int] = None) -> optuna.storages.BaseStorage:
    """`journal:<file>` -> an Optuna journal file; anything else -> an RDB URL (sqlite, postgresql, mysql).

    With a heartbeat, RDB trials whose process died are failed after `grace_period` and retried.
    """
    if url.startswith(JOURNAL_PREFIX):
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix(JOURNAL_PREFIX))
        return optuna.storages.JournalStorage(backend)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # concurrent writers wait
    with warnings.catch_warnings():  # heartbeats have been "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period, heartbeat_stale_trial_callback=retry)


def _options(spec: DictConfig) -> dict:
    return OmegaConf.to_container(spec.options, resolve=True) if spec.get("options") else {}


def make_sampler(spec: DictConfig, seed: Optional[int], grid: Optional[Mapping[str, list]] = None):
    """The sampler named by `spec` (see SAMPLERS); a grid sampler takes the search space's values."""
    if spec.name not in SAMPLERS:
        raise SweepConfigError(f"hydra.sweeper.sampler.name={spec.name!r}: allowed: {', '.join(SAMPLERS)}")
    if spec.name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed, **_options(spec))
    return SAMPLERS[spec.name](seed=seed, **_options(spec))


def make_pruner(spec: DictConfig) -> optuna.pruners.BasePruner:
    if spec.name not in PRUNERS:
        raise SweepConfigError(f"hydra.sweeper.pruner.name={spec.name!r}: allowed: {', '.join(PRUNERS)}")
    return PRUNERS[spec.name](**_options(spec))


class PruningCallback(TrainerCallback):
    """Reports the eval loss of each periodic evaluation and stops training when the trial should be pruned.

    The value is negated for a maximizing study, so that the pruner compares trials in the study's direction.
    Evaluations before and after training (step 0, the final one) are not reported.
    """

    def __init__(self, trial: optuna.trial.Trial, sign: float):
        self.trial, self.sign = trial, sign
        self.status: Optional[str] = None
        self.reason: Optional[str] = None
        self._training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if not self._training or loss is None:
            return
        step = state.global_step
        self.trial.report(self.sign * loss if math.isfinite(loss) else math.inf, step)
        if self.trial.should_prune():
            self.status, self.reason = "pruned", f"pruned at step {step} (eval_loss {loss:.4g})"
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

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
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
            self.storage.set_trial_user_attr(self.trial_id, CURVE_ATTR + name, thin_curve(self.curves[name]))
        self._changed.clear()


def trial_hooks(hydra_cfg: DictConfig) -> Tuple[List[Any], List[str]]:
    """(trainer callbacks, tracker tags) for this job when the sweeper launched it: its curves recorded into
    the study, pruning, study tags."""
    trial_id = os.environ.get(TRIAL_ENV)
    if trial_id is None:
        return [], []
    study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=open_storage(os.environ[STORAGE_ENV]),
                              pruner=make_pruner(hydra_cfg.sweeper.pruner))
    trial = optuna.trial.Trial(study, int(trial_id))
    trial.set_user_attr("host", socket.gethostname())  # where its folder and adapter lie
    trial.set_user_attr("devices", os.environ.get("CUDA_VISIBLE_DEVICES"))  # the GPU(s) it was pinned to
    tags = [f"study:{study.study_name}", f"trial:{trial.number}"]
    recorder = StudyRecorder(study._storage, int(trial_id))
    if len(study.directions) > 1:  # Optuna cannot prune multi-objective trials
        return [recorder], tags
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    return [recorder, PruningCallback(trial, sign)], tags
