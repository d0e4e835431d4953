"""`python -m ftharness from_best=<sweep dir | best.json | storage URL> [overrides]`: a study's best point trained
as one run, e.g. on the full budget (`train.max_steps=-1 train.epochs=3 eval.final=full`).

The command line is rewritten before Hydra reads it: `from_best=SOURCE` (and `from_best.index=N`, which picks a
point of a Pareto front) give way to the overrides that ran the best trial (its job's `.hydra/overrides.yaml`: the
study's own settings and the point's parameters), and the rest of the command line follows, so it wins. The best is
best.json's (ftharness/sweep/best.py): after a confirmation, the point with the best mean over its seeds; confirmed at
another budget (`confirm.budget`), it trains at that budget unless the command line sets `train.max_steps`. The run
is named `best of <study>` and its summary.json records where its parameters came from (`from_best`).

With nothing else on the command line, the run would be the best trial's own run again: its saved adapter is handed
over instead (one line naming it, nothing trained), as a budget-true study's trials are the runs the user trains
(sweeps/budget.yaml). `from_best.retrain=true` trains it again all the same.
"""

import json
import os
from pathlib import Path
from typing import List, Optional, Tuple

import yaml

from ftharness.config.overrides import RATIO, override_text
from ftharness.contract import FROM_BEST_ENV, MAX_STEPS_KEY, STUDY_FILE

FROM_BEST, INDEX, RETRAIN = "from_best", "from_best.index", "from_best.retrain"


class FromBestError(ValueError):
    """A from_best source that names no best point: the command says so in one line."""


def _option(argv: List[str], key: str) -> Tuple[Optional[str], List[str]]:
    """(the value of `key=...` in argv or None, argv without it)."""
    values = [a.partition("=")[2] for a in argv if a.partition("=")[0] == key]
    return (values[-1] if values else None), [a for a in argv if a.partition("=")[0] != key]


def _best_record(source: str) -> dict:
    """best.json's content for a sweep folder, a best.json file, or a storage URL (computed from the study)."""
    path = Path(source)
    if path.is_dir():
        if (path / "best.json").is_file():
            return json.loads((path / "best.json").read_text())
        if (path / STUDY_FILE).is_file():
            spec = json.loads((path / STUDY_FILE).read_text())
            return _study_best(spec["storage"], spec["study_name"])
        raise FromBestError(f"{FROM_BEST}={source}: no best.json or study.json in this folder (a sweep folder of a "
                            "study is needed)")
    if path.suffix == ".json":
        if not path.is_file():
            raise FromBestError(f"{FROM_BEST}={source}: no such file")
        return json.loads(path.read_text())
    return _study_best(source, None)


def _study_best(storage: str, study_name: Optional[str]) -> dict:
    from ftharness.sweep.best import best
    from ftharness.sweep.optuna_objects import StudyNotFound, open_existing_study

    try:
        return best(open_existing_study(storage, study_name, choose="pass its sweep folder or best.json instead"))
    except StudyNotFound as error:
        raise FromBestError(f"{FROM_BEST}={error}") from None


def _pick(record: dict, source: str, index: Optional[str]) -> dict:
    """The best trial of the record; for a Pareto front the one at `index`."""
    if "pareto_front" in record:
        front = record["pareto_front"]
        listing = "; ".join(f"{i}: trial {t['number']} {t['values']}" for i, t in enumerate(front))
        if index is None or not index.isdigit() or int(index) >= len(front):
            raise FromBestError(f"{FROM_BEST}={source}: a Pareto front of {len(front)} trials, pick one with "
                                f"{INDEX}=N: {listing}")
        return front[int(index)]
    if not record.get("best"):
        raise FromBestError(f"{FROM_BEST}={source}: study {record.get('study')!r} has no completed trial yet")
    return record["best"]


def _point_overrides(trial: dict) -> Tuple[List[str], str]:
    """(the overrides that ran `trial`, where they came from): its job's own when its folder is on this machine,
    else its parameters alone (a ratio `a/b` written back as `a`)."""
    overrides_file = Path(trial.get("run_dir") or "") / ".hydra" / "overrides.yaml"
    if trial.get("run_dir") and overrides_file.is_file():
        return list(yaml.safe_load(overrides_file.read_text()) or []), str(overrides_file)
    params = trial["params"]
    overrides = [f"{key.split(RATIO)[0]}={override_text(value * params[key.split(RATIO)[1]])}" if RATIO in key
                 else f"{key}={override_text(value)}" for key, value in params.items()]
    return overrides, "the study's parameters (the trial's folder is not on this machine)"


def _confirmed_budget(trial: dict) -> Optional[int]:
    """The optimizer steps the best point was confirmed at, when not the study's (confirm.budget)."""
    return (trial.get("confirmed") or {}).get("budget")


def adapter_to_hand_over(trial: dict) -> Optional[str]:
    """A best trial's (best.json's `best`) saved adapter, when it lies on this machine and the point was not found
    best at another budget than its trial's; else None."""
    weights = trial.get("weights_dir")
    if not weights or not Path(weights).is_dir() or _confirmed_budget(trial) is not None:
        return None
    return weights


def _handed_over(record: dict, trial: dict) -> Optional[str]:
    """The line that hands the best trial's own adapter over (adapter_to_hand_over), else None."""
    weights = adapter_to_hand_over(trial)
    if weights is None:
        return None
    return (f"trial {trial['number']} of {record.get('study')} trained this point to the end of its run: its adapter "
            f"is {weights}. Nothing trained: add overrides (e.g. train.max_steps=-1 train.epochs=3) or "
            f"{RETRAIN}=true to train it again")


def from_best_arguments(argv: List[str]) -> Tuple[List[str], Optional[str]]:
    """(`argv` with `from_best=...` resolved into the best trial's overrides, followed by the rest of argv; the line
    that hands its adapter over instead, when nothing else is on the command line). argv as it is without
    `from_best=`. Sets FROM_BEST_ENV, the provenance the run records. Raises FromBestError."""
    source, rest = _option(argv, FROM_BEST)
    index, rest = _option(rest, INDEX)
    retrain, rest = _option(rest, RETRAIN)
    if source is None:
        if index is not None or retrain is not None:
            raise FromBestError(f"{INDEX} and {RETRAIN} need {FROM_BEST}=<sweep dir | best.json | storage URL>")
        return argv, None
    if retrain not in (None, "true", "false"):
        raise FromBestError(f"{RETRAIN}={retrain}: allowed: true or false")
    if "-m" in rest or "--multirun" in rest:
        raise FromBestError(f"{FROM_BEST}= trains one run: drop -m")
    record = _best_record(source)
    trial = _pick(record, source, index)
    if not rest and retrain != "true" and (line := _handed_over(record, trial)):
        return [], line
    overrides, origin = _point_overrides(trial)
    if _confirmed_budget(trial) is not None:  # best at that budget: trained at it unless the command line says else
        overrides.append(f"{MAX_STEPS_KEY}={_confirmed_budget(trial)}")
    os.environ[FROM_BEST_ENV] = json.dumps({"source": source, "study": record.get("study"),
                                            "trial": trial["number"], "params": trial["params"],
                                            "values": trial.get("values"), "confirmed": trial.get("confirmed"),
                                            "overrides_from": origin})
    return [*overrides, *rest], None
