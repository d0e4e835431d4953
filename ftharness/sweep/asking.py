"""What a study asks next, and which of its trials use up its budget.

One study, any number of sweep processes: each counts the trials the study still misses and asks at most `n_jobs`
of them. Asking is seeded by the trial count, so that resumed and parallel sweeps draw new points. Two kinds of
asks run no job and do not use up `n_trials` (the study asks once more for each, up to `n_trials` more in all, a
bound should the sampler keep proposing them): points over the memory budget (`wont_fit`,
ftharness/sweep/feasibility.py) and repeats of points already trained (`trained_twin`).
"""

import math
from typing import Any, Dict, List, Optional

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ftharness.contract import Status, TrialAttr
from ftharness.sweep.confirmation import is_confirmation
from ftharness.sweep.heartbeats import ask_with_heartbeat
from ftharness.sweep.optuna_objects import SweepConfigError, experimental, make_sampler
from ftharness.sweep.telling import tell_not_launched

NOT_COUNTED = (Status.WONT_FIT, Status.REPEAT)  # asks that run no job: the study asks once more for each
TWIN_TOLERANCE = 0.01  # numbers within 1 % (of the value on a log scale, of the range on a linear one) are equal
TRAINED = (Status.COMPLETED, Status.PRUNED, Status.DIVERGED, Status.OOM)  # results a repeat is told again


def current_trials(study: optuna.Study) -> List[FrozenTrial]:
    """The study's trials, less those whose process died and whose parameters were retried, the surplus and the
    confirmations (which the budget does not count)."""
    trials = study.get_trials(deepcopy=False)
    with experimental():
        retried = {optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    return [t for t in trials if t.number not in retried and t.user_attrs.get(TrialAttr.STATUS) != Status.SURPLUS
            and not is_confirmation(t)]


def counted(study: optuna.Study) -> int:
    """Trials that use up the budget: all but the waiting (enqueued, e.g. retried) ones."""
    return sum(t.state != TrialState.WAITING for t in current_trials(study))


def extra_asks(study: optuna.Study, base: int, grid: bool) -> int:
    """Asks over `base` that the study may make: one per ask that ran no job (NOT_COUNTED), up to `base` of them;
    a grid's points are each asked once: none."""
    if grid:
        return 0
    return min(sum(t.user_attrs.get(TrialAttr.STATUS) in NOT_COUNTED for t in current_trials(study)), base)


def free_slots(study: optuna.Study, budget: int) -> int:
    """The trials of the budget that are not asked yet."""
    return max(budget - counted(study), 0)


def seeded_ask(study: optuna.Study, storage, sampler_spec, distributions: Dict[str, BaseDistribution],
               grid: Optional[Dict[str, list]]) -> optuna.trial.Trial:
    """Ask with a sampler seeded by the trial count, so that resumed and parallel sweeps draw new points; a grid
    sampler keeps its seed: it shuffles the grid by it and gives trial number k the k-th point, so that every process
    agrees on which trial runs which point. A sampler that raises (a space it cannot sample) stops the sweep in one
    line, its trial failed."""
    base_seed = sampler_spec.seed
    seed = None if base_seed is None else base_seed + (0 if grid is not None else len(study.trials))
    study.sampler = make_sampler(sampler_spec, seed, grid)
    trial = ask_with_heartbeat(study, storage)
    try:  # what study.ask(fixed_distributions) does, but a sampler that raises leaves no trial running
        for name, distribution in distributions.items():
            suggest(trial, name, distribution)
    except Exception as error:  # noqa: BLE001 -- whatever the sampler raised, its trial fails with it
        reason = f"hydra.sweeper.sampler ({type(study.sampler).__name__}) raised {type(error).__name__}: {error}"
        tell_not_launched(study, trial, reason)
        raise SweepConfigError(f"trial {trial.number} not asked: {reason}") from None
    return trial


def suggest(trial: optuna.trial.Trial, name: str, distribution: BaseDistribution) -> Any:
    """`trial`'s value of `name` from `distribution`, through the public suggest API."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    suggest_number = trial.suggest_int if isinstance(distribution, IntDistribution) else trial.suggest_float
    return suggest_number(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def surplus_reason(study: optuna.Study, trial: optuna.trial.Trial, budget: int, grid: bool) -> Optional[str]:
    """Why a trial asked in a race with another sweep process on the same study must not run: Optuna cannot ask
    "if the budget is not used up" atomically, and two grid samplers seeded alike pick the same point. The earlier
    trial number wins, so exactly one of the two processes gives its trial up."""
    earlier = [t for t in current_trials(study) if t.number < trial.number and t.state != TrialState.WAITING]
    if len(earlier) >= budget:
        return f"the study's {budget} trials were asked by another sweep process"
    twin = next((t for t in earlier if grid and t.params == trial.params), None)
    return None if twin is None else f"trial {twin.number} runs the same grid point"


def trained_twin(study: optuna.Study, trial: optuna.trial.Trial) -> Optional[FrozenTrial]:
    """The earliest trained trial of the study (TRAINED) whose point equals this one's: the same categorical values
    (seed included), numbers within TWIN_TOLERANCE. Its job would repeat that trial's run (the same seed, the same
    rows in the same order), so the sampler's proposal is told that trial's result instead.

    The twin of a pruned trial is told pruned too: its curve would repeat the pruned one's step for step, and only
    the order in which trials reached the rung could change the pruner's verdict (the demo's trial 12, a twin of the
    best trial 1 within 0.03 % of its lr, was pruned at step 3 where trial 1 had passed)."""
    distributions = trial.distributions
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if other.user_attrs.get(TrialAttr.STATUS) not in TRAINED or is_confirmation(other):  # another seed
            continue
        if other.params.keys() == trial.params.keys() and all(
                _same_value(trial.params[key], other.params[key], distributions[key]) for key in trial.params):
            return other
    return None


def _same_value(a, b, distribution: BaseDistribution) -> bool:
    if isinstance(distribution, (FloatDistribution, IntDistribution)) and not isinstance(a, bool):
        if distribution.log:
            return abs(math.log(a / b)) <= math.log1p(TWIN_TOLERANCE)
        return abs(a - b) <= TWIN_TOLERANCE * (distribution.high - distribution.low)
    return a == b
