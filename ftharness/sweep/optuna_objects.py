"""The Optuna objects a sweep and its jobs both build from the config: samplers, pruners, storages.

A job of the ftharness sweeper finds its study and trial in environment variables that the sweeper sets per job
(ftharness/sweep/job_env.py); what it does with them inside training is ftharness/sweep/pruning.py. This module
stays free of torch and transformers, so that a sweep with a wrong setting stops at once.
"""

import logging
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import optuna
import sqlalchemy
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from ftharness.ui.console import last_line
from ftharness.ui.formatting import number_of

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
FILE_PREFIXES = (JOURNAL_PREFIX, "sqlite:///")  # storage URLs whose rest is a file's path
OPEN_TRIES = 3  # an RDB storage opened by several sweep processes at once: Optuna creates its tables and version row
# unguarded, so all but one may fail with "already exists"; a second try, a second later, finds them made
# What a storage raises when its server stops answering: SQLAlchemy's errors, which Optuna wraps in its own when they
# come from a commit; a journal file's are OSErrors.
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError)


class SweepConfigError(CompactHydraException):
    """A wrong sweeper setting, or a sweep that cannot go on: one line says what and why (`refusals_in_one_line`)."""


@contextmanager
def refusals_in_one_line() -> Iterator[None]:
    """A SweepConfigError's message is all a user can act on: the command ends on it (exit 1), not followed by
    Hydra's hint to set HYDRA_FULL_ERROR=1 for a stack trace; with HYDRA_FULL_ERROR=1 Hydra shows the trace."""
    try:
        yield
    except SweepConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(error, file=sys.stderr)
        raise SystemExit(1) from None

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
    for prefix in FILE_PREFIXES:
        if url.startswith(prefix):
            path = (root / url.removeprefix(prefix)).resolve()  # an absolute path stays as it is
            path.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(path)
    return url


@contextmanager
def experimental() -> Iterator[None]:
    """Optuna's "experimental" features (heartbeats and their retries since Optuna 2.8, metric names since 3.2)
    used without its ExperimentalWarning each time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def retried_number(trial: optuna.trial.FrozenTrial) -> Optional[int]:
    """The number of the trial that `trial` retries (the last of Optuna's retry history), None when it is no retry."""
    with experimental():
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[-1] if history else None


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna without its INFO lines ("A new study created in RDB", "Using an existing study"): the sweeper says
    which study it opens and what is left of it in a line of its own."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def open_storage(url: str, heartbeat_interval: Optional[int] = None, grace_period: Optional[int] = None,
                 stale_trial_callback: Optional[Callable] = None) -> optuna.storages.BaseStorage:
    """`journal:<file>` -> an Optuna journal file; anything else -> an RDB URL (sqlite, postgresql, mysql).

    With a heartbeat, RDB trials whose process died are failed after `grace_period`, then handed to
    `stale_trial_callback` (the sweeper's: ftharness/sweep/heartbeats.py `StaleTrials`). An RDB storage that
    another process was setting up at the same moment is opened again (OPEN_TRIES).
    """
    if url.startswith(JOURNAL_PREFIX):
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix(JOURNAL_PREFIX))
        return optuna.storages.JournalStorage(backend)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # concurrent writers wait
    for tries_left in reversed(range(OPEN_TRIES)):
        try:
            with experimental():  # heartbeats since Optuna 2.8
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period,
                                                  heartbeat_stale_trial_callback=stale_trial_callback)
        except sqlalchemy.exc.SQLAlchemyError as error:
            if not tries_left or not _made_meanwhile(error):
                raise
            time.sleep(1)


class StudyNotFound(ValueError):
    """A storage that a reading command was given holds no study it can read: the command says why in one line."""


def open_existing_study(target: str, study_name: Optional[str] = None,
                        choose: str = "name the study") -> optuna.Study:
    """The study named `study_name` (None: the only one) in `target` (a .db path, an RDB URL, journal:<file>), for
    the commands that read one. A file that is not there is not made (Optuna's storages made an empty one, which then
    held "0 studies"); a file that is no storage, a name it lacks, or several studies and no name (`choose` says how
    to pick one) raise StudyNotFound: these met the user as tracebacks. A server's password stays off the line."""
    url = storage_url(target)
    file = storage_file(url)
    if file is not None and not file.is_file():
        raise StudyNotFound(f"{shown_url(url)}: no such file")
    try:
        storage = open_storage(url)
        names = optuna.get_all_study_names(storage)
    except ImportError as error:
        raise StudyNotFound(driver_missing(url, error)) from None
    except (*STORAGE_ERRORS, ValueError) as error:  # a journal file that is not one: json's ValueError
        raise StudyNotFound(f"{shown_url(url)}: not read as an Optuna storage ({storage_error_line(error)})") from None
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name not in names:
        raise StudyNotFound(f"{shown_url(url)} holds {number_of(len(names), 'study', 'studies')} "
                            f"({', '.join(names) or 'none'})"
                            + (f", not {study_name!r}" if study_name else f": {choose}"))
    return optuna.load_study(study_name=study_name, storage=storage)


def _made_meanwhile(error: sqlalchemy.exc.SQLAlchemyError) -> bool:
    """Whether another process created what this one was creating (SQLite: "table studies already exists";
    PostgreSQL: "relation ... already exists" or a unique violation), not a storage that does not answer."""
    return isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)


def open_sweep_storage(url: str, heartbeat_interval: Optional[int], grace_period: Optional[int],
                       stale_trial_callback: Callable) -> optuna.storages.BaseStorage:
    """open_storage at a sweep's start, where a storage that does not answer (a server down, a file that cannot be
    written) or whose driver is missing stops the sweep in one line naming the setting."""
    try:
        return open_storage(url, heartbeat_interval, grace_period, stale_trial_callback)
    except ImportError as error:
        raise SweepConfigError(f"hydra.sweeper.storage={driver_missing(url, error)}") from None
    except STORAGE_ERRORS as error:
        raise SweepConfigError(f"hydra.sweeper.storage={shown_url(url)}: the storage does not answer "
                               f"({storage_error_line(error)})") from None


def driver_missing(url: str, error: ImportError) -> str:
    """`mysql://u:***@host/db: its database driver is not installed here (No module named 'MySQLdb')`: Optuna's
    ImportError for a server URL whose driver is missing (PostgreSQL's, psycopg, comes with the postgres extra) met the
    user as a traceback."""
    return f"{shown_url(url)}: its database driver is not installed here ({storage_error_line(error)})"


def storage_error_line(error: BaseException) -> str:
    """The first line of what a storage raised (SQLAlchemy's or the driver's message), at most 200 characters."""
    return str(error.__cause__ or error).strip().splitlines()[0][:200]


def shown_url(url: str) -> str:
    """A storage URL as the console shows it: a file as its path (relative to here when below), a server's URL
    without its password."""
    path = storage_file(url)
    if path is not None:
        return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    if "://" not in url:
        return url
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def storage_file(url: str) -> Optional[Path]:
    """The file of a journal or SQLite storage URL; None for a server's."""
    return next((Path(url.removeprefix(p)) for p in FILE_PREFIXES if url.startswith(p)), None)


def storage_url(target: str) -> str:
    """A path to a .db file becomes a SQLite URL; URLs and journal:<file> pass as they are."""
    if "://" in target or target.startswith(JOURNAL_PREFIX):
        return target
    return f"sqlite:///{Path(target).resolve()}"


def _options(spec: DictConfig) -> dict:
    return OmegaConf.to_container(spec.options, resolve=True) if spec.get("options") else {}


def by_target(kind: str, spec: DictConfig, **kwargs: Any) -> Any:
    """The sampler or pruner of `spec._target_` (any class, Optuna's or your own) made through Hydra's instantiate,
    with `options` and `kwargs` as its keyword arguments; one that cannot be made stops the sweep in one line."""
    from hydra.utils import instantiate

    try:
        return instantiate({"_target_": spec._target_, **_options(spec), **kwargs})
    except Exception as error:  # noqa: BLE001 -- Hydra's InstantiationException wraps whatever the class raised
        raise SweepConfigError(f"hydra.sweeper.{kind}._target_={spec._target_}: {last_line(error)}") from None


def by_name(kind: str, make: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """An Optuna sampler or pruner of ours by name, with `options`; an option it does not take, or a value it
    refuses, stops the sweep in one line, not in Optuna's traceback. Made without the ExperimentalWarning of
    QMCSampler (experimental since Optuna 3.0), which came at every ask."""
    try:
        with experimental():
            return make(*args, **options)
    except (TypeError, ValueError) as error:
        raise SweepConfigError(f"hydra.sweeper.{kind}.options: {error}") from None


def make_sampler(spec: DictConfig, seed: Optional[int], grid: Optional[Mapping[str, list]] = None):
    """The sampler named by `spec` (see SAMPLERS) or of its `_target_`; a grid sampler takes the search space's
    values."""
    if spec.get("_target_"):
        return by_target("sampler", spec, **({} if seed is None else {"seed": seed}))
    if spec.name not in SAMPLERS:
        raise SweepConfigError(f"hydra.sweeper.sampler.name={spec.name!r}: allowed: {', '.join(SAMPLERS)}")
    return by_name("sampler", SAMPLERS[spec.name], *([grid] if spec.name == "grid" else []), seed=seed,
                   **_options(spec))


EVIDENCE = ("eval_loss", "train_loss")  # what a trial reports to the pruner (hydra.sweeper.pruner.evidence)
WARMUP_OPTIONS = {"median": "n_warmup_steps", "percentile": "n_warmup_steps", "successive_halving": "min_resource",
                  "hyperband": "min_resource"}  # the option that hydra.sweeper.pruner.warmup sets, per pruner


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`hydra.sweeper.pruner.warmup` in optimizer steps: below 1 a share of the trial's steps (rounded up: 0.5 of
    12 steps is 6, of 13 is 7), 1 or more a number of steps, as `optim.warmup` counts them."""
    return max(1, math.ceil(warmup * total_steps)) if warmup < 1 else int(warmup)


def make_pruner(spec: DictConfig, total_steps: Optional[int] = None) -> optuna.pruners.BasePruner:
    """The pruner named by `spec` (see PRUNERS) or of its `_target_`. A trial's job passes its number of optimizer
    steps, known once its Trainer starts (from max_steps, or from epochs x batches): `warmup` then becomes steps;
    without it (the sweeper's own copy, which never decides on pruning) the option is left at the pruner's default."""
    if not spec.get("_target_") and spec.name not in PRUNERS:
        raise SweepConfigError(f"hydra.sweeper.pruner.name={spec.name!r}: allowed: {', '.join(PRUNERS)}")
    if spec.evidence not in EVIDENCE:
        raise SweepConfigError(f"hydra.sweeper.pruner.evidence={spec.evidence!r}: allowed: {', '.join(EVIDENCE)}")
    if spec.report_steps < 1:
        raise SweepConfigError(f"hydra.sweeper.pruner.report_steps={spec.report_steps}: allowed: 1 or more")
    options = _options(spec)
    warmup = spec.get("warmup")
    if warmup is not None:
        option = None if spec.get("_target_") else WARMUP_OPTIONS.get(spec.name)
        if option is None or warmup <= 0 or option in options:
            raise SweepConfigError(
                f"hydra.sweeper.pruner.warmup={warmup}: allowed: a share of the trial's steps (below 1) or a number "
                f"of steps (1 or more) with the pruners {', '.join(WARMUP_OPTIONS)}, and not beside their own "
                f"options.{option or 'n_warmup_steps'} (this pruner: {spec.get('_target_') or spec.name})")
        if total_steps is not None:
            options[option] = warmup_steps(warmup, total_steps)
    return by_target("pruner", spec) if spec.get("_target_") else by_name("pruner", PRUNERS[spec.name], **options)
