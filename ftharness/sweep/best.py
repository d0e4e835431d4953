"""An Optuna study's best trial(s): best.json, written by the sweeper when a sweep ends, and on demand by
`python -m ftharness.study` (ftharness/study.py). Once the study's best points were confirmed with other seeds
(ftharness/sweep/confirmation.py), `best` is the point with the best mean, and `confirmation` holds the verdict
and every confirmed point's values. optimization_results.yaml beside it says the same in hydra-optuna-sweeper's
layout."""

import json
from pathlib import Path
from typing import Optional

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ftharness.contract import TrialAttr
from ftharness.sweep.confirmation import ConfirmedPoint, confirmed_points, verdict
from ftharness.sweep.telling import study_metric_names
from ftharness.ui.formatting import format_value

PEER_RESULTS_FILE = "optimization_results.yaml"  # hydra-optuna-sweeper's name for a sweep's answer


def best(study: optuna.Study) -> dict:
    """The best trial (single objective) or the Pareto front (several objectives), with their run folders and
    the host they lie on (trials of a shared study may have run on other machines)."""
    names = study_metric_names(study)

    def describe(trial: FrozenTrial) -> dict:
        return {"number": trial.number, "params": trial.params, "values": dict(zip(names, trial.values)),
                "host": trial.user_attrs.get(TrialAttr.HOST), "run_dir": trial.user_attrs.get(TrialAttr.RUN_DIR),
                "weights_dir": trial.user_attrs.get(TrialAttr.WEIGHTS_DIR),
                "steps": trial.user_attrs.get(TrialAttr.STEPS)}

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return {"study": study.study_name, "best": None}
    if len(study.directions) > 1:
        return {"study": study.study_name, "pareto_front": [describe(t) for t in study.best_trials]}
    head = {"study": study.study_name, "direction": study.direction.name.lower()}
    points = confirmed_points(study)
    if not points:
        return {**head, "best": describe(study.best_trial)}
    return {**head, "best": {**describe(points[0].trial), "confirmed": _seeds(points[0])},
            "confirmation": {"verdict": verdict(study, points), "best_is": BEST_IS,
                             "points": [{"number": p.trial.number, "params": p.trial.params, **_seeds(p)}
                                        for p in points]}}


BEST_IS = ("the confirmed point with the best mean over its seeds (the trial that found it, then its confirmations "
           "with other seeds), not the single best trial")


def _seeds(point: ConfirmedPoint) -> dict:
    """A confirmed point's objective over its seeds: mean, min, max, each value, and what gave none."""
    spread = point.spread
    return {"mean": spread.mean, "min": spread.lo, "max": spread.hi, "values": list(point.values),
            "confirmation_seeds": list(point.seeds), "confirmations_without_value": point.unfinished,
            "budget": point.budget}


def peer_results(record: dict) -> Optional[dict]:
    """best.json's answer in the layout of hydra-optuna-sweeper's optimization_results.yaml, for the scripts written
    against it: `best_params` and `best_value` (after a confirmation, the point's mean over its seeds), or the Pareto
    front as `solutions`; None while the study has no completed trial."""
    if record.get("pareto_front"):
        return {"name": "ftharness", "solutions": [{"params": point["params"], "values": list(point["values"].values())}
                                                   for point in record["pareto_front"]]}
    point = record.get("best")
    if point is None:
        return None
    value = point["confirmed"]["mean"] if "confirmed" in point else next(iter(point["values"].values()))
    return {"name": "ftharness", "best_params": point["params"], "best_value": value}


def best_line(record: dict) -> str:
    """best.json's answer in one line: `study app: best trial 4 (x=1, y=0.715), objective 0.0312`, with a confirmed
    point's mean over its seeds, or the trials of a Pareto front."""
    head = f"study {record['study']}"
    front = record.get("pareto_front")
    if front:
        trials = f"trial{'s' * (len(front) > 1)} {', '.join(str(point['number']) for point in front)}"
        return f"{head}: the Pareto front of {', '.join(front[0]['values'])} holds {trials}"
    point = record.get("best")
    if point is None:
        return f"{head}: no completed trial, no best point"
    (metric, value), = point["values"].items()
    seeds = point.get("confirmed")
    value_text = f"{format_value(seeds['mean'])}, the mean of {len(seeds['values'])} seeds" if seeds \
        else format_value(value)
    params = ", ".join(f"{key}={format_value(v)}" for key, v in point["params"].items())
    return f"{head}: best trial {point['number']} ({params}), {metric} {value_text}"


def write_best(study: optuna.Study, out_dir: Path) -> Path:
    """best.json in `out_dir`, and optimization_results.yaml beside it once the study has an answer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = best(study)
    path = out_dir / "best.json"
    path.write_text(json.dumps(record, indent=2))
    results = peer_results(record)
    if results is not None:
        OmegaConf.save(OmegaConf.create(results), out_dir / PEER_RESULTS_FILE)
    return path
