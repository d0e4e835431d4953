"""The results of an Optuna study: a table of its trials, its best trial(s), and optuna-dashboard.

Written by the sweeper when a sweep ends, and on demand for any existing study:
    python -m ftharness.study outputs/studies/default-study.db            tables into the last sweep's folder
    python -m ftharness.study sqlite:///abs/x.db --study NAME --out DIR   any RDB URL or journal:<file>
    python -m ftharness.study outputs/studies/default-study.db --dashboard   serve it on 127.0.0.1
"""

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftharness.reporting import format_value, markdown_table
from ftharness.sweeping import JOURNAL_PREFIX, open_storage

TOP_TRIALS = 5  # rows printed at the end of a sweep


def _objective_names(study: optuna.Study) -> List[str]:
    names = study.user_attrs.get("metrics") or [f"objective_{i}" for i in range(len(study.directions))]
    return names if len(names) == len(study.directions) else [f"objective_{i}" for i in range(len(study.directions))]


def _wall_time(trial: FrozenTrial) -> Optional[float]:
    if trial.user_attrs.get("wall_time_s") is not None:
        return trial.user_attrs["wall_time_s"]
    if trial.datetime_start and trial.datetime_complete:
        return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)
    return None


def trial_rows(study: optuna.Study) -> List[Dict[str, Any]]:
    """One row per trial: number, state, params, objective(s), steps run, wall time, prune / fail reason."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    names = _objective_names(study)
    rows = []
    for trial in trials:
        values = trial.values or [None] * len(names)
        row = {"number": trial.number, "state": trial.state.name, **{k: trial.params.get(k) for k in keys}}
        row.update(dict(zip(names, values)))
        row.update({"steps": trial.user_attrs.get("steps"), "wall_time_s": _wall_time(trial),
                    "status": trial.user_attrs.get("status"), "reason": trial.user_attrs.get("reason"),
                    "run_dir": trial.user_attrs.get("run_dir")})
        rows.append(row)
    return rows


def best(study: optuna.Study) -> dict:
    """The best trial (single objective) or the Pareto front (several objectives), with their run folders."""
    names = _objective_names(study)

    def describe(trial: FrozenTrial) -> dict:
        return {"number": trial.number, "params": trial.params, "values": dict(zip(names, trial.values)),
                "run_dir": trial.user_attrs.get("run_dir"), "weights_dir": trial.user_attrs.get("weights_dir")}

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return {"study": study.study_name, "best": None}
    if len(study.directions) > 1:
        return {"study": study.study_name, "pareto_front": [describe(t) for t in study.best_trials]}
    return {"study": study.study_name, "direction": study.direction.name.lower(), "best": describe(study.best_trial)}


def top_trials(study: optuna.Study, rows: List[Dict[str, Any]], count: int = TOP_TRIALS) -> List[Dict[str, Any]]:
    """Completed rows, best first (single objective), or the Pareto-optimal ones (several)."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        return [r for r in done if r["number"] in front][:count]
    name = _objective_names(study)[0]
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    return sorted(done, key=lambda r: sign * r[name])[:count]


def report(study: optuna.Study, out_dir: Path) -> str:
    """Write trials.csv, trials.md and best.json into `out_dir`; print and return the top trials."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    with (out_dir / "trials.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["number", "state"])
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "trials.md").write_text(markdown_table([{k: format_value(v) for k, v in r.items()} for r in rows]))
    (out_dir / "best.json").write_text(json.dumps(best(study), indent=2))
    counts = {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    top = markdown_table([{k: format_value(v) for k, v in r.items() if k != "run_dir"} for r in top_trials(study, rows)])
    text = (f"\nStudy {study.study_name}: {len(rows)} trials "
            f"({', '.join(f'{n} {s.lower()}' for s, n in counts.items() if n)}); tables in {out_dir}\n\n{top}")
    print(text)
    return text


def storage_url(target: str) -> str:
    """A path to a .db file becomes a SQLite URL; URLs and journal:<file> pass as they are."""
    if "://" in target or target.startswith(JOURNAL_PREFIX):
        return target
    return f"sqlite:///{Path(target).resolve()}"


def load(target: str, study_name: Optional[str]) -> optuna.Study:
    storage = open_storage(storage_url(target))
    if study_name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            sys.exit(f"ftharness.study: {target} holds {len(names)} studies ({', '.join(names)}): pass --study")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ftharness.study", description=__doc__.splitlines()[0])
    parser.add_argument("storage", help="a .db file, an RDB URL or journal:<file>")
    parser.add_argument("--study", help="the study's name (needed when the storage holds several)")
    parser.add_argument("--out", type=Path, help="folder for the tables (default: the study's last sweep folder)")
    parser.add_argument("--dashboard", action="store_true", help="serve optuna-dashboard on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="dashboard port")
    args = parser.parse_args(argv)
    study = load(args.storage, args.study)
    if args.dashboard:
        from optuna_dashboard import run_server

        print(f"optuna-dashboard for {study.study_name}: http://127.0.0.1:{args.port}")
        run_server(open_storage(storage_url(args.storage)), host="127.0.0.1", port=args.port)
        return
    report(study, args.out or Path(study.user_attrs.get("last_sweep_dir", ".")))


if __name__ == "__main__":
    main()
