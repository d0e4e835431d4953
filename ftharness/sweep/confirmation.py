"""The confirmation of a study's best points: each run again with other seeds, then told apart beyond seed noise.

A short trial's eval loss moves with its seed by more than the gaps between a study's top trials (docs/study.md:
the seed alone moved the rank study's grad_norm by more than a rank step), so a study's single best trial is
often its luckiest seed (Dodge et al. 2020 found the same for fine-tuning). With `hydra.sweeper.confirm.top_k`,
the sweeper runs the best top_k distinct points again with `confirm.seeds` other seeds each (seed+1, ...): trials
of the same study, marked with the number of the trial they confirm (TrialAttr.CONFIRMS), never pruned, not
counted in `n_trials`. A point's number is then the mean over all its seeds with their range (ftharness/report/
seeds.py `Spread`), the best point is the one with the best mean, and the verdict follows the report's spread rule
(ftharness/report/findings.py `below`): `best confirmed` when every seed of the best point beats every seed of the
runner-up, else `within noise of trial N` (the runner-up's trial).

`confirm.budget` runs the confirmations at another number of optimizer steps, the run the user will train: a short
study decays a high learning rate before it can harm, so its ranking can move with the horizon (issue 39). Each point
then runs with `seeds` seeds from the study's own (its trial's value, at the study's horizon, is no sample of the
budget's), and the verdict also says whether the study's order of its points held at that budget.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftharness.contract import Status, TrialAttr
from ftharness.report.findings import HELD, below
from ftharness.report.seeds import Spread

CONFIRMED, WITHIN_NOISE = "best confirmed", "within noise of trial"


def is_confirmation(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(TrialAttr.CONFIRMS) is not None


def _minimizes(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MINIMIZE


def top_points(study: optuna.Study, top_k: int) -> List[FrozenTrial]:
    """The study's `top_k` best completed trials of distinct points (confirmations and repeats aside), best first."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and not is_confirmation(t)
            and t.user_attrs.get(TrialAttr.STATUS) != Status.REPEAT]
    done.sort(key=lambda t: t.value if _minimizes(study) else -t.value)
    points: List[FrozenTrial] = []
    for trial in done:
        if len(points) < top_k and all(trial.params != p.params for p in points):
            points.append(trial)
    return points


def _told(study: optuna.Study) -> set:
    """(trial number, seed, budget) of the confirmations that ran to a result (a failed or interrupted one runs
    again)."""
    return {(t.user_attrs[TrialAttr.CONFIRMS], t.user_attrs.get(TrialAttr.SEED), t.user_attrs.get(TrialAttr.BUDGET))
            for t in study.get_trials(deepcopy=False) if is_confirmation(t) and t.state.is_finished()
            and t.state != TrialState.FAIL}


def confirmation_seeds(seeds: int, base_seed: int, budget: Optional[int] = None) -> range:
    """The seeds each point runs with: base_seed + 1, ... beside the trial's own; at another budget from base_seed,
    since the trial's own run is then no sample of it."""
    first = base_seed if budget is not None else base_seed + 1
    return range(first, first + seeds)


def planned_runs(study: optuna.Study, top_k: int, seeds: int, base_seed: int,
                 budget: Optional[int] = None) -> List[Tuple[FrozenTrial, int]]:
    """(trial, seed) of the confirmations still to run: the top_k points, each with its confirmation seeds at
    `budget` steps (None: the study's), less those a run of the same command told already."""
    told = _told(study)
    return [(point, seed) for point in top_points(study, top_k)
            for seed in confirmation_seeds(seeds, base_seed, budget) if (point.number, seed, budget) not in told]


@dataclass(frozen=True)
class ConfirmedPoint:
    """A point of the study and its objective over its seeds: the trial that found it, then its confirmations."""

    trial: FrozenTrial
    values: Tuple[float, ...]  # the trial's own value first, unless they ran at another budget
    seeds: Tuple[int, ...]  # the confirmations' seeds (the trial's own is the study's seed)
    unfinished: int  # confirmations that gave no value (diverged, failed)
    budget: Optional[int] = None  # the confirmations' optimizer steps when not the study's (confirm.budget)

    @property
    def spread(self) -> Spread:
        return Spread(self.values)


def confirmed_points(study: optuna.Study) -> List[ConfirmedPoint]:
    """The points that confirmations ran for, best mean first ([] when none ran, or for several objectives). Of
    confirmations at several budgets (the command run again with another confirm.budget), the latest budget's."""
    if len(study.directions) > 1:
        return []
    trials = study.get_trials(deepcopy=False)
    confirmations = [t for t in trials if is_confirmation(t) and t.state.is_finished()]
    budget = confirmations[-1].user_attrs.get(TrialAttr.BUDGET) if confirmations else None
    confirmations = [t for t in confirmations if t.user_attrs.get(TrialAttr.BUDGET) == budget]
    points = []
    for number in dict.fromkeys(t.user_attrs[TrialAttr.CONFIRMS] for t in confirmations):
        runs = sorted((t for t in confirmations if t.user_attrs[TrialAttr.CONFIRMS] == number),
                      key=lambda t: t.user_attrs.get(TrialAttr.SEED))
        valued = [t for t in runs if t.state == TrialState.COMPLETE]
        own = () if budget is not None else (trials[number].value,)
        points.append(ConfirmedPoint(trials[number], (*own, *(t.value for t in valued)),
                                     tuple(t.user_attrs.get(TrialAttr.SEED) for t in valued),
                                     len(runs) - len(valued), budget))
    points.sort(key=lambda p: p.spread.mean if _minimizes(study) else -p.spread.mean)
    return points


def verdict(study: optuna.Study, points: Sequence[ConfirmedPoint]) -> Optional[str]:
    """`best confirmed` or `within noise of trial N` for the best-mean point against the runner-up (None with
    fewer than two points); at another budget followed by whether the study's order of the points held there."""
    if len(points) < 2:
        return None
    best, runner_up = points[0].spread, points[1].spread
    beats = below(best, runner_up) if _minimizes(study) else below(runner_up, best)
    said = CONFIRMED if beats == HELD else f"{WITHIN_NOISE} {points[1].trial.number}"
    return said if points[0].budget is None else f"{said} at {points[0].budget} steps; {_horizon(study, points)}"


def _horizon(study: optuna.Study, points: Sequence[ConfirmedPoint]) -> str:
    """Whether the order of the points by their study trials' values is their order by mean at the budget."""
    at_budget = [p.trial.number for p in points]
    in_study = [p.trial.number for p in sorted(points, key=lambda p: p.trial.value if _minimizes(study)
                                               else -p.trial.value)]
    if at_budget == in_study:
        return "the study's order held"
    return (f"the study's order did not hold: trials {', '.join(map(str, at_budget))} by their mean there, "
            f"{', '.join(map(str, in_study))} in the study")
