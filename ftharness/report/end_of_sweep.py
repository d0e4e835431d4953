"""The end of a sweep: its results table (ftharness/report/results.py), printed once, and its report.

`SweepSummary` is a Hydra callback (see `hydra.callbacks` in conf/config.yaml): before the jobs start it
announces the swept keys to them (for run names); when they have all ended it writes `results.csv` and
`results.md` into the sweep directory, draws the report (ftharness/report/sweep_report.py), logs a study's own run
on the SwanLab board (ftharness/ui/study_board.py) and prints the table followed by the paths of best.json (a
study's best trial) and report.html. The sweep of another Hydra app, which has no such callback, ends with its best
point and the command for its report (`end_of_app_sweep`, called by the sweeper).
"""

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ftharness.config.overrides import swept_keys
from ftharness.contract import SWEEP_ENV, SWEPT_KEYS_ENV
from ftharness.ui.tracking import sweep_announcement

log = logging.getLogger(__name__)


def end_of_sweep(sweep_dir: Path, tracker: Optional[DictConfig] = None) -> None:
    """Write the results table and the report of the sweep in `sweep_dir`; print the table and their paths. With
    `tracker` (the sweep's `tracker` config) and a study, log the study's own run on the board too."""
    # plotting libraries and the runs' reader only once a sweep has ended
    from ftharness.report.figures import VALUES_BY_KEY
    from ftharness.report.results import sweep_results, write_table
    from ftharness.report.runs import not_run_note
    from ftharness.report.sweep_report import write_report
    from ftharness.ui.formatting import markdown_table

    results = sweep_results(sweep_dir)
    paths = [f"table:  {sweep_dir / 'results.md'}"]
    if (sweep_dir / "best.json").exists():
        paths.append(f"best:   {sweep_dir / 'best.json'}")
        paths.extend(_best_adapter(sweep_dir))
        paths.append(f"train the best on the full budget: python -m ftharness from_best={sweep_dir} "
                     "train.max_steps=-1 train.epochs=3 eval.final=full eval.max_new_tokens=40")
    try:
        write_report(sweep_dir, results)  # with the table
        paths.append(f"report: {sweep_dir / 'report.html'}")
    except Exception as error:  # noqa: BLE001 -- the results are written; the report can be redrawn later
        write_table(results.rows, sweep_dir)
        log.warning("report not written (%s: %s); retry: python -m ftharness.report %s",
                    type(error).__name__, error, sweep_dir)
    if tracker is not None and results.study is not None:
        figure = next((sweep_dir / name for name in VALUES_BY_KEY if (sweep_dir / name).is_file()), None)
        _log_study_board(results.study, tracker, figure)
    confirmation = results.confirmation
    confirmed = ["", confirmation.heading, "", markdown_table(confirmation.rows)] if confirmation else []
    heading = f"Results ({len(results.runs)} runs{not_run_note(results.runs)}):"
    print("\n".join(["", heading, "", markdown_table(results.rows), *confirmed, *paths]))


def end_of_app_sweep(sweep_dir: Path) -> None:
    """Print how the sweep of another Hydra app ended: its jobs write none of what ftharness's table and curves read,
    so its best point as best.json says it, the files, and the command that draws the report from the study."""
    from ftharness.sweep.best import PEER_RESULTS_FILE, best_line

    record = json.loads((sweep_dir / "best.json").read_text())
    print("\n".join([best_line(record), f"best:   {sweep_dir / 'best.json'} (and {PEER_RESULTS_FILE})",
                      f"report: python -m ftharness.report {sweep_dir}"]))


def _best_adapter(sweep_dir: Path) -> list:
    """The line naming the best trial's saved adapter, when from_best would hand it over: the trained model already,
    when the study's trials are the run the user trains (sweeps/budget.yaml)."""
    from ftharness.sweep.from_best import adapter_to_hand_over

    best = json.loads((sweep_dir / "best.json").read_text()).get("best")
    weights = adapter_to_hand_over(best) if best else None
    if weights is None:
        return []
    return [f"adapter: {weights} (trial {best['number']}, {best['steps']} steps; from_best={sweep_dir} alone hands "
            "it over)"]


def _log_study_board(study, tracker: DictConfig, figure: Optional[Path]) -> None:
    """The study's run on the board (ftharness/ui/study_board.py), in the project its trials log into, with the
    report's figure of values against keys."""
    from ftharness.report.importances import own_study
    from ftharness.ui.study_board import log_study_board

    try:
        log_study_board(own_study(study), study.study_name, tracker.project, tracker.log_dir, tracker.mode,
                        figure)
    except Exception as error:  # noqa: BLE001 -- the trials' runs and the report are written; only this is missing
        log.warning("the study's SwanLab run not written (%s: %s)", type(error).__name__, error)


class SweepSummary(Callback):
    """Hydra callback: run names for the jobs, and the results table when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        keys = swept_keys(config)
        os.environ[SWEPT_KEYS_ENV] = ",".join(keys)
        os.environ[SWEEP_ENV] = json.dumps(sweep_announcement(config, keys))  # group, colours

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        end_of_sweep(Path(config.hydra.sweep.dir), config.get("tracker"))
