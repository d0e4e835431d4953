"""What a sweep is asked to do: the study it runs and what for (StudyTarget), how much of it and how (Budget), with
the `hydra.sweeper` settings checked before any trial (`check_sweep_settings`), and the keys the sweeper sets in the
app's config checked to be there (`check_keys_it_sets`: an app without `seed` met a traceback after its study ran).
"""

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf

from ftharness.contract import MAX_STEPS_KEY, SEED_KEY
from ftharness.sweep.feasibility import check_budget_setting
from ftharness.sweep.heartbeats import Heartbeat
from ftharness.sweep.optuna_objects import SweepConfigError
from ftharness.ui.formatting import number_of

DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class StudyTarget:
    """The study a sweep runs, and what it optimizes."""

    name: str
    storage: Optional[str]  # as configured; null: sqlite under outputs/studies/<study>.db (resolved in setup)
    metrics: List[str]
    directions: List[str]  # one per metric


@dataclass(frozen=True)
class Budget:
    """How many trials a study runs, how many at once, on how many GPUs each, and when it gives up."""

    n_trials: int
    n_jobs: int
    seeds: int  # grid studies: each point runs with this many seeds
    devices_per_trial: int
    max_failure_rate: float
    confirm_top_k: int  # best points run again with other seeds after the study (ftharness/sweep/confirmation.py)
    confirm_seeds: int
    confirm_budget: Optional[int]  # the confirmations' train.max_steps, when not the study's
    memory_budget_gb: Any  # auto | GB per trial | None: points over it are told `wont_fit` before launch


def check_sweep_settings(study: StudyTarget, budget: Budget, heartbeat: Heartbeat, sampler_name: str) -> None:
    """The settings of `hydra.sweeper`, each refused in one line naming it, the value and what is allowed (before
    this check, n_jobs=0 asked nothing and waited for good; n_trials=-1, direction=up and heartbeat_interval=0 met
    a traceback)."""
    if len(study.metrics) != len(study.directions):
        raise SweepConfigError(f"hydra.sweeper: {number_of(len(study.metrics), 'metric')} but "
                               f"{number_of(len(study.directions), 'direction')}")
    if not study.name:  # was a study named '' in the hidden file outputs/studies/.db
        raise SweepConfigError("hydra.sweeper.study_name='' (by default the config's `name`): allowed: a name")
    wrong = [direction for direction in study.directions if direction not in DIRECTIONS]
    if wrong or not study.directions:
        raise SweepConfigError(f"hydra.sweeper.direction={wrong[0] if wrong else []!r}: allowed: "
                               f"{' or '.join(DIRECTIONS)}, or a list of them, one per metric")
    check_counts(budget, heartbeat)
    if budget.devices_per_trial < 0:
        raise SweepConfigError(f"hydra.sweeper.devices_per_trial={budget.devices_per_trial}: allowed: 0 (no pinning) "
                               "or more GPUs per trial")
    if budget.seeds < 1 or (budget.seeds > 1 and sampler_name != "grid"):
        raise SweepConfigError(f"hydra.sweeper.seeds={budget.seeds}: allowed: 1, or more seeds per point of a grid "
                               f"study (sampler.name=grid; this one is {sampler_name})")
    top_k, seeds, steps = budget.confirm_top_k, budget.confirm_seeds, budget.confirm_budget
    if top_k < 0 or seeds < 1 or (steps is not None and steps < 1):
        raise SweepConfigError(f"hydra.sweeper.confirm: top_k={top_k}, seeds={seeds}, budget={steps}: allowed: top_k "
                               "0 (off) or more points, seeds 1 or more, budget null (the study's steps) or 1 or "
                               "more optimizer steps")
    if top_k and (budget.seeds > 1 or len(study.metrics) > 1):
        raise SweepConfigError(f"hydra.sweeper.confirm.top_k={top_k}: allowed only for a study of one objective whose "
                               "points run with one seed (hydra.sweeper.seeds=1)")
    check_budget_setting(budget.memory_budget_gb)


def check_counts(budget: Budget, heartbeat: Heartbeat) -> None:
    """The sweeper's counts and rates, each within what it can mean."""
    at_least = [("n_trials", budget.n_trials, 1, "1 or more trials"),
                ("n_jobs", budget.n_jobs, 1, "1 or more trials per batch"),
                ("heartbeat_interval", heartbeat.interval, 1, "1 or more seconds"),
                ("max_retry", heartbeat.max_retry, 0, "0 (no retry) or more")]
    for setting, value, low, allowed in at_least:
        if value < low:
            raise SweepConfigError(f"hydra.sweeper.{setting}={value}: allowed: {allowed}")
    if heartbeat.grace_period <= heartbeat.interval:
        raise SweepConfigError(f"hydra.sweeper.grace_period={heartbeat.grace_period}: allowed: more seconds than "
                               f"heartbeat_interval ({heartbeat.interval}), else a running trial whose beat is late is "
                               "failed")
    if not 0 <= budget.max_failure_rate <= 1:
        raise SweepConfigError(f"hydra.sweeper.max_failure_rate={budget.max_failure_rate}: allowed: a share from 0 "
                               "(stop at the first failed trial) to 1 (never stop)")


_ABSENT = object()


def check_keys_it_sets(config: DictConfig, budget: Budget) -> None:
    """Seeds and confirmations set keys of the app's config: `seed` (hydra.sweeper.seeds, confirm.top_k) and
    train.max_steps (confirm.budget). An app whose config lacks them stops here, before any trial."""
    uses = [("hydra.sweeper.seeds", budget.seeds, SEED_KEY, budget.seeds > 1),
            ("hydra.sweeper.confirm.top_k", budget.confirm_top_k, SEED_KEY, budget.confirm_top_k > 0),
            ("hydra.sweeper.confirm.budget", budget.confirm_budget, MAX_STEPS_KEY,
             budget.confirm_top_k > 0 and budget.confirm_budget is not None)]
    for setting, value, key, used in uses:
        if used and OmegaConf.select(config, key, default=_ABSENT) is _ABSENT:
            raise SweepConfigError(f"{setting}={value}: it sets `{key}` in each job's config, a key this app's config "
                                   f"has not; add `{key}` to it (read by the task function), or leave {setting} at "
                                   "its default")
