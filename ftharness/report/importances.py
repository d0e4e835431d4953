"""A study's own trials, and which of its keys matter: what Optuna's plots and the figure by key read.

A study holds more than the trials its sampler asked: confirmations (its best points run again with other seeds,
TrialAttr.CONFIRMS) and repeats (a point trained already, told that trial's result, Status.REPEAT). Drawn as study
trials they read as late, worse trials in the history and as extra samples in the slices, so the report draws
Optuna's plots on a copy of the study that holds only its own trials; the confirmation table shows the others.

Importances (Optuna's default, PED-ANOVA) compare the best 10 % of the completed trials with all of them: below 10
completed trials that top is a single trial, and the ranking says which key that one trial happened to differ in.
Below IMPORTANCE_FLOOR completed trials the report neither draws nor uses them (the figure by key then takes the
keys in their search order).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import optuna
from optuna.trial import TrialState

from ftharness.contract import Status, TrialAttr
from ftharness.sweep.asking import current_trials
from ftharness.sweep.optuna_objects import experimental, quiet_optuna

IMPORTANCE_FLOOR = 10  # completed trials the importances need before the report draws or uses them
STUDY_NUMBERS = "study_numbers"  # the copy's attribute: each of its trials' number in the study it copies


def own_study(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of `study` with its own finished trials only: no confirmations, repeats or surplus. The
    copy numbers its trials 0, 1, ...: their numbers in `study` are its STUDY_NUMBERS attribute."""
    with quiet_optuna():  # no "A new study created in memory" per report
        copy = optuna.create_study(directions=study.directions)
    if study.metric_names:
        with experimental():
            copy.set_metric_names(study.metric_names)
    own = [t for t in current_trials(study) if t.state.is_finished()
           and t.user_attrs.get(TrialAttr.STATUS) != Status.REPEAT]
    copy.add_trials(own)
    copy.set_user_attr(STUDY_NUMBERS, [t.number for t in own])
    return copy


@dataclass
class Importances:
    """The searched keys, most important first, and what that order rests on."""

    keys: List[str]  # most important first; the search order when `values` is empty
    points: int  # the completed own trials the importances rest on
    values: Dict[str, float] = field(default_factory=dict)  # empty below IMPORTANCE_FLOOR (or several objectives)

    @property
    def order(self) -> str:
        """How the keys were ordered, for headings: `by importance (PED-ANOVA over 12 completed trials)`."""
        if self.values:
            return f"by importance (PED-ANOVA over {self.points} completed trials)"
        return (f"in search order (importances need {IMPORTANCE_FLOOR} completed trials of the study, it has "
                f"{self.points})")


def key_importances(own: optuna.Study, keys: Sequence[str]) -> Importances:
    """The importances of `keys` in the study `own` (its own trials, `own_study`), when it has enough completed
    trials and one objective."""
    points = sum(t.state == TrialState.COMPLETE for t in own.get_trials(deepcopy=False))
    searched = [k for k in keys if k in _searched(own)]
    if points < IMPORTANCE_FLOOR or len(own.directions) > 1 or len(searched) < 2:
        return Importances(list(keys), points)
    values = optuna.importance.get_param_importances(own, params=searched)  # the evaluator of Optuna's plot
    ranked = sorted(keys, key=lambda k: -values.get(k, -1.0))  # keys the study does not search go last
    return Importances(ranked, points, dict(values))


def _searched(study: optuna.Study) -> set:
    return {key for t in study.get_trials(deepcopy=False) for key in t.params}
