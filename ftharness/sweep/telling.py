"""What a study is told about each of its trials: the result a job's summary.json holds (an ftharness trial) or its
task function returned (any Hydra app), or a verdict reached without a job (over the memory budget, a repeat of a
point already trained, interrupted, a job that could not be launched).

A diverged or out-of-memory trial is a result about its point, not a failure of the harness: it is told as pruned and
infeasible (an Optuna constraint), so that TPE, GP and NSGA-II rank it below every feasible trial and learn to avoid
its region; a failed trial (FAIL) teaches the sampler nothing. Measured in simulation over 24 sampler seeds, the mean
best eval loss against the full grid's best for the constraint on diverged trials: 1.04 -> 1.02 for today's default
study; mixed for the former 8-trial median study (1.46 -> 1.52 with interpolated curves, 1.45 -> 1.40 with the
nearest measured ones).
"""

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import FrozenTrial, TrialState

from ftharness.contract import Status, StudyAttr, TrialAttr, TrialSummary
from ftharness.ui.formatting import number_of

log = logging.getLogger(__name__)

INFEASIBLE = (Status.DIVERGED, Status.OOM)  # told as pruned with a violated constraint of that name: the sampler
# avoids them (as it avoids the points told `wont_fit` before launch)
Outcome = Tuple[TrialState, Optional[List[float]], Dict[str, Any]]  # (state, objective values, user attrs)


def tell_state(study: optuna.Study, trial: optuna.trial.Trial, values: Optional[List[float]],
               state: TrialState) -> None:
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as error:  # GridSampler calls Study.stop() once the grid is done: only optimize() may
        if "Study.stop" not in str(error):
            raise


def tell_outcome(study: optuna.Study, trial: optuna.trial.Trial, outcome: Outcome) -> None:
    """Record a result: its attributes, the constraint of an infeasible one, then its state and values. A retried
    trial carries the attributes of the one it retries: a reason its result has not is cleared ("interrupted
    (Ctrl-C)" stood beside a completed retry)."""
    state, values, attrs = outcome
    if TrialAttr.REASON not in attrs and TrialAttr.REASON in trial.user_attrs:
        attrs = {**attrs, TrialAttr.REASON: ""}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if attrs.get(TrialAttr.STATUS) in INFEASIBLE:
        trial.set_constraint(attrs[TrialAttr.STATUS], 1.0)  # > 0: violated
    tell_state(study, trial, values, state)
    log.info("trial %d: %s", trial.number, told_line(attrs.get(TrialAttr.STATUS), values, attrs.get(TrialAttr.REASON)))


def told_line(status: Optional[str], values: Optional[List[float]], reason: Optional[str]) -> str:
    """`completed 0.02243`, `pruned at step 3 (objective 8.354; ...)`, `failed: RuntimeError: ...`: what a trial was
    told, for the log (and the console of an app whose logging shows the sweeper's INFO lines)."""
    if status == Status.PRUNED and reason:
        return reason
    told = " ".join(f"{value:.4g}" for value in values or [])
    return f"{status or Status.FAILED}{' ' + told if told else ''}{': ' + reason if reason else ''}"


def job_outcome(job: JobReturn, metrics: List[str]) -> Outcome:
    """(state, objective values, user attrs) of a finished job: from the summary.json it wrote (an ftharness trial,
    the richer record), else from the value its task function returned (any Hydra app)."""
    run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
    if job.status == JobStatus.FAILED:  # what escaped the task function (`job.return_value` would raise it)
        error = job._return_value
        if isinstance(error, optuna.TrialPruned):  # raised by the app's `trial.report` (ftharness/sweep/trial.py)
            return TrialState.PRUNED, None, {TrialAttr.RUN_DIR: str(run_dir), TrialAttr.STATUS: Status.PRUNED,
                                             TrialAttr.REASON: str(error)}
        return TrialState.FAIL, None, {TrialAttr.RUN_DIR: str(run_dir), TrialAttr.STATUS: Status.FAILED,
                                       TrialAttr.REASON: f"{type(error).__name__}: {error}"}
    returned = job.return_value
    if TrialSummary.read(run_dir) is not None:
        return summary_outcome(run_dir, metrics)
    return returned_outcome(run_dir, returned, metrics)


def returned_outcome(run_dir: Path, returned: Any, metrics: List[str]) -> Outcome:
    """(state, objective values, user attrs) from a task function's return value: a number (one objective), a
    sequence (a value per objective, in the order of `metrics`) or a mapping (values by metric name)."""
    attrs: Dict[str, Any] = {TrialAttr.RUN_DIR: str(run_dir)}
    try:
        state, values, attrs = objective_outcome(returned_values(returned, metrics), metrics, attrs)
    except ValueError as error:
        state, values, attrs = TrialState.FAIL, None, {**attrs, TrialAttr.REASON: str(error)}
    return state, values, {**attrs, TrialAttr.STATUS: Status.COMPLETED if values else Status.FAILED}


def returned_values(returned: Any, metrics: List[str]) -> List[Optional[float]]:
    """The objective values in a task function's return value, in the order of `metrics`; ValueError says what does
    not match them."""
    if returned is None:
        raise ValueError("the job wrote no summary.json and its task function returned no value")
    if isinstance(returned, Mapping):
        missing = [name for name in metrics if name not in returned]
        if missing:
            raise ValueError(f"the task function returned no {', '.join(missing)} (its keys: "
                             f"{', '.join(map(str, returned))}; hydra.sweeper.metric names the objectives)")
        values = [returned[name] for name in metrics]
    elif isinstance(returned, Sequence) and not isinstance(returned, str):
        values = list(returned)
    else:
        values = [returned]
    if len(values) != len(metrics):
        raise ValueError(f"the task function returned {number_of(len(values), 'value')} for the study's "
                         f"{number_of(len(metrics), 'objective')} ({', '.join(metrics)})")
    return [_as_float(value) for value in values]


def _as_float(value: Any) -> Optional[float]:
    """A returned value as a number (an int, a NumPy or 0-d tensor value, a numeric string); None when it is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def summary_outcome(run_dir: Path, metrics: List[str]) -> Outcome:
    """(state, objective values, user attrs) from the summary.json in `run_dir` (failed when there is none)."""
    attrs: Dict[str, Any] = {TrialAttr.RUN_DIR: str(run_dir)}
    summary = TrialSummary.read(run_dir)
    if summary is None:
        return TrialState.FAIL, None, {**attrs, TrialAttr.STATUS: Status.FAILED,
                                       TrialAttr.REASON: "the job wrote no summary.json"}
    attrs.update({TrialAttr.STATUS: summary.status, TrialAttr.STEPS: summary.steps,
                  TrialAttr.WALL_TIME_S: summary.wall_time_s, TrialAttr.WEIGHTS_DIR: summary.weights_dir,
                  TrialAttr.SUMMARY: summary.as_dict(),  # the report's, wherever it runs
                  TrialAttr.REASON: summary.stop_reason or summary.error})
    if summary.status == Status.PRUNED or summary.status in INFEASIBLE:
        return TrialState.PRUNED, None, attrs
    if summary.status != Status.COMPLETED:
        return TrialState.FAIL, None, attrs
    return objective_outcome([summary.metric(name) for name in metrics], metrics, attrs)


def objective_outcome(values: List[Optional[float]], metrics: List[str], attrs: Dict[str, Any]) -> Outcome:
    """A finished trial's outcome: complete with its values, or failed when one of them is not a finite number."""
    if any(v is None or not math.isfinite(v) for v in values):
        return TrialState.FAIL, None, {**attrs, TrialAttr.REASON: f"objective {metrics} is not a number: {values}"}
    return TrialState.COMPLETE, values, attrs


def tell_wont_fit(study: optuna.Study, trial: optuna.trial.Trial, reason: str, excess: float) -> None:
    """A point over the memory budget, told at once: pruned, with a violated constraint as large as the excess,
    so that the sampler learns the region; no job runs."""
    trial.set_user_attr(TrialAttr.STATUS, Status.WONT_FIT)
    trial.set_user_attr(TrialAttr.REASON, reason)
    trial.set_constraint(Status.WONT_FIT, excess)
    tell_state(study, trial, None, TrialState.PRUNED)


def tell_repeat(study: optuna.Study, trial: optuna.trial.Trial, original: FrozenTrial, metrics: List[str]) -> str:
    """A point equal to a trained one's (ftharness/sweep/asking.py `trained_twin`), told the original's result
    without a job: its state, values, constraint and reported curve, so that the sampler and the pruner count it
    as they count the original; its own status says it is a repeat. Returns the console's line."""
    status = original.user_attrs.get(TrialAttr.STATUS)
    values = original.values if original.state == TrialState.COMPLETE else None  # a pruned trial's is its last report
    result = (", ".join(f"{name} {value:.3g}" for name, value in zip(metrics, values)) if values
              else f"{status}{_at_step(original)}")
    trial.set_user_attr(TrialAttr.STATUS, Status.REPEAT)
    trial.set_user_attr(TrialAttr.REPEATS, original.number)
    trial.set_user_attr(TrialAttr.REASON, f"≈ trial {original.number} ({result}): not trained again")
    for step, value in original.intermediate_values.items():
        trial.report(value, step)
    if status in INFEASIBLE:
        trial.set_constraint(status, 1.0)
    tell_state(study, trial, values, original.state)
    return f"≈ trial {original.number}: {result}, not trained again"


def _at_step(trial: FrozenTrial) -> str:
    steps = trial.user_attrs.get(TrialAttr.STEPS)
    return f" at step {steps}" if steps is not None else ""


def tell_interrupted(study: optuna.Study, trial: optuna.trial.Trial, run_dir: Optional[Path]) -> None:
    """A trial stopped by Ctrl-C: failed, with its folder when the job got as far as making it."""
    trial.set_user_attr(TrialAttr.STATUS, Status.INTERRUPTED)
    trial.set_user_attr(TrialAttr.REASON, "interrupted (Ctrl-C)")
    if run_dir is not None and run_dir.is_dir():
        trial.set_user_attr(TrialAttr.RUN_DIR, str(run_dir))
    study.tell(trial, state=TrialState.FAIL)


def tell_not_launched(study: optuna.Study, trial: optuna.trial.Trial, reason: str) -> None:
    """A trial whose job never started (its overrides did not compose, the launcher raised): failed with the reason,
    never left running."""
    trial.set_user_attr(TrialAttr.STATUS, Status.FAILED)
    trial.set_user_attr(TrialAttr.REASON, reason)
    tell_state(study, trial, None, TrialState.FAIL)


def default_metric_names(n_objectives: int) -> List[str]:
    """The objectives' names where the app names none (no `objective` in its config, no hydra.sweeper.metric):
    `objective`, or `objective_0`, `objective_1`, ... for several."""
    return ["objective"] if n_objectives == 1 else [f"objective_{i}" for i in range(n_objectives)]


def metric_names(study: optuna.Study) -> Optional[List[str]]:
    """The objectives' names as the sweeper stored them (StudyAttr.METRICS); None where they do not match the
    study's directions (a study made by other means)."""
    names = study.user_attrs.get(StudyAttr.METRICS) or []
    return list(names) if len(names) == len(study.directions) else None


def study_metric_names(study: optuna.Study) -> List[str]:
    """The objectives' names as the sweeper stored them, else as it names them by default."""
    return metric_names(study) or default_metric_names(len(study.directions))
