"""The comparison report of a sweep: curves by hyperparameter value, summary plots, the sweep's results table
and Optuna's plots (ftharness/report/sweep_report.py), or the study write-up from several sweeps
(ftharness/report/study_doc.py):

    python -m ftharness.report outputs/multirun/lr-study/2026-11-25_10-00-00
    python -m ftharness.report --doc docs/study.md DIR [DIR ...]     the study write-up from several sweeps
    python -m ftharness.report --doc docs/study.md --update DIR       ... replacing only DIR's comparison
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ftharness.report.study_doc import write_study_doc
from ftharness.report.sweep_report import ReportError, write_report
from ftharness.sweep.optuna_objects import StudyNotFound
from ftharness.ui.console import quiet_library_notices


def main(argv: Optional[List[str]] = None) -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(prog="python -m ftharness.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep (multirun) folders")
    parser.add_argument("--doc", type=Path, help="write the study write-up (Markdown) from all the sweeps here")
    parser.add_argument("--command", default="bash scripts/study.sh", help="the regenerating command, for --doc")
    parser.add_argument("--update", action="store_true", help="with --doc: replace only these sweeps' comparisons "
                                                               "in the write-up, keep the others")
    args = parser.parse_args(argv)
    try:
        if args.doc:
            write_study_doc(args.sweep_dirs, args.doc, args.command, args.update)
            return
        for sweep_dir in args.sweep_dirs:
            write_report(sweep_dir)
            print(f"report: {sweep_dir / 'report.html'}")
    except (ReportError, StudyNotFound) as error:  # the study of a sweep folder whose storage moved
        sys.exit(f"ftharness.report: {error}")


if __name__ == "__main__":
    main()
