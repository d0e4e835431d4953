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
    """(trial number, seed) of the confirmations that ran to a result (a failed or interrupted one runs again)."""
    return {(t.user_attrs[TrialAttr.CONFIRMS], t.user_attrs.get(TrialAttr.SEED))
            for t in study.get_trials(deepcopy=False) if is_confirmation(t) and t.state.is_finished()
            and t.state != TrialState.FAIL}


def planned_runs(study: optuna.Study, top_k: int, seeds: int, base_seed: int) -> List[Tuple[FrozenTrial, int]]:
    """(trial, seed) of the confirmations still to run: the top_k points, each with seeds base_seed + 1, ...,
    less those a run of the same command told already."""
    told = _told(study)
    return [(point, seed) for point in top_points(study, top_k)
            for seed in range(base_seed + 1, base_seed + 1 + seeds) if (point.number, seed) not in told]


@dataclass(frozen=True)
class ConfirmedPoint:
    """A point of the study and its objective over its seeds: the trial that found it, then its confirmations."""

    trial: FrozenTrial
    values: Tuple[float, ...]  # the trial's own value first
    seeds: Tuple[int, ...]  # the confirmations' seeds (the trial's own is the study's seed)
    unfinished: int  # confirmations that gave no value (diverged, failed)

    @property
    def spread(self) -> Spread:
        return Spread(self.values)


def confirmed_points(study: optuna.Study) -> List[ConfirmedPoint]:
    """The points that confirmations ran for, best mean first ([] when none ran, or for several objectives)."""
    if len(study.directions) > 1:
        return []
    trials = study.get_trials(deepcopy=False)
    confirmations = [t for t in trials if is_confirmation(t) and t.state.is_finished()]
    points = []
    for number in dict.fromkeys(t.user_attrs[TrialAttr.CONFIRMS] for t in confirmations):
        runs = sorted((t for t in confirmations if t.user_attrs[TrialAttr.CONFIRMS] == number),
                      key=lambda t: t.user_attrs.get(TrialAttr.SEED))
        valued = [t for t in runs if t.state == TrialState.COMPLETE]
        points.append(ConfirmedPoint(trials[number], (trials[number].value, *(t.value for t in valued)),
                                     tuple(t.user_attrs.get(TrialAttr.SEED) for t in valued),
                                     len(runs) - len(valued)))
    points.sort(key=lambda p: p.spread.mean if _minimizes(study) else -p.spread.mean)
    return points


def verdict(study: optuna.Study, points: Sequence[ConfirmedPoint]) -> Optional[str]:
    """`best confirmed` or `within noise of trial N` for the best-mean point against the runner-up (None with
    fewer than two points)."""
    if len(points) < 2:
        return None
    best, runner_up = points[0].spread, points[1].spread
    beats = below(best, runner_up) if _minimizes(study) else below(runner_up, best)
    return CONFIRMED if beats == HELD else f"{WITHIN_NOISE} {points[1].trial.number}"
