"""An Optuna study's results: its best trial(s) in best.json, the results table of its trials
(ftharness/report/results.py), and optuna-dashboard.

best.json is written by the sweeper when a sweep ends; the rest on demand, for any existing study:
    python -m ftharness.study outputs/studies/default-study.db            table, best.json: the last sweep's folder
    python -m ftharness.study sqlite:///abs/x.db --study NAME --out DIR   any RDB URL or journal:<file>
    python -m ftharness.study outputs/studies/default-study.db --dashboard   serve it on 127.0.0.1
    python -m ftharness.study outputs/studies/default-study.db --settings    and the settings its trials share
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ftharness.contract import StudyAttr
from ftharness.lazy import optuna_dashboard_server
from ftharness.report.results import results_of, write_table
from ftharness.report.runs import study_runs
from ftharness.sweep.best import write_best
from ftharness.sweep.optuna_objects import StudyNotFound, open_existing_study, open_storage, storage_url
from ftharness.sweep.settings import StudySettings


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ftharness.study", description=__doc__.splitlines()[0])
    parser.add_argument("storage", help="a .db file, an RDB URL or journal:<file>")
    parser.add_argument("--study", help="the study's name (needed when the storage holds several)")
    parser.add_argument("--out", type=Path, help="folder for the table and best.json (default: the study's last "
                                                 "sweep folder when it is on this machine, else here)")
    parser.add_argument("--dashboard", action="store_true", help="serve optuna-dashboard on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="dashboard port")
    parser.add_argument("--settings", action="store_true", help="list the settings the study answers for: every "
                                                                "key its trials share, then the keys it searches")
    args = parser.parse_args(argv)
    try:
        study = open_existing_study(args.storage, args.study, choose="pass --study NAME")
    except StudyNotFound as error:
        sys.exit(f"ftharness.study: {error}")
    if args.dashboard:
        print(f"optuna-dashboard for {study.study_name}: http://127.0.0.1:{args.port}")
        optuna_dashboard_server()(open_storage(storage_url(args.storage)), host="127.0.0.1", port=args.port)
        return
    last_sweep_dir = Path(study.user_attrs.get(StudyAttr.LAST_SWEEP_DIR, "."))  # on another machine in a shared study
    out_dir = args.out or (last_sweep_dir if last_sweep_dir.is_dir() else Path("."))
    table = write_table(results_of(study_runs(study), study).rows, out_dir)
    print(f"\nStudy {study.study_name}: {len(study.trials)} trials\n\n{table}\n"
          f"table: {out_dir / 'results.md'}\nbest: {write_best(study, out_dir)}")
    settings = StudySettings.stored(study)
    if args.settings:
        print("\nSettings (what every trial shares):\n" + "\n".join(settings.lines() if settings else ["none stored"]))
    elif settings:
        print(f"settings: {len(settings.fixed)} keys every trial shares (--settings lists them)")


if __name__ == "__main__":
    main()
