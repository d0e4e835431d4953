"""The table that ends a sweep: one row per job, read back from the `summary.json` each job wrote.

`SweepSummary` is a Hydra callback (see `hydra.callbacks` in conf/config.yaml): before the jobs start it
announces the swept keys to them (for run names); when they have all ended it writes `summary.csv` and
`summary.md` into the sweep directory, prints the table and draws the report (ftharness/report.py).
"""

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ftharness.tracking import SWEPT_KEYS_ENV

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["objective", "test_accuracy", "final_loss", "final_grad_norm", "wall_time_s", "peak_memory_mb",
                  "status"]


def swept_keys(config: DictConfig) -> List[str]:
    """Keys swept by the command line (`lora.r=8,16`) or by `hydra.sweeper.params`, in that order."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    params = [k.split("/")[0] for k in OmegaConf.select(config, "hydra.sweeper.params") or {}]  # a/b: ratio of a to b
    return keys + [k for k in params if k not in keys]


def format_value(value: Any) -> str:
    """Floats (also sampled ones that arrive as override strings, e.g. an Optuna lr) to 4 significant digits."""
    if isinstance(value, str) and re.fullmatch(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+", value):
        value = float(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def sweep_rows(sweep_dir: Path, keys: List[str]) -> List[Dict[str, str]]:
    """One row per job folder that holds a summary.json, in job order."""
    rows = []
    folders = [p.parent for p in sweep_dir.glob("*/summary.json")]
    for folder in sorted(folders, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name)):
        summary = json.loads((folder / "summary.json").read_text())
        params = summary.get("params", {})
        reason = {"failed": summary.get("error"), "oom": summary.get("stop_reason")}.get(summary["status"])
        status = f"{summary['status']}: {reason}" if reason else summary["status"]
        row = {"job": folder.name, **{k: format_value(params.get(k)) for k in keys}}
        row.update({
            "objective": format_value((summary.get("objective") or {}).get("value")),
            "test_accuracy": format_value((summary.get("after") or {}).get("test_accuracy")),
            "final_loss": format_value(summary.get("final_loss")),
            "final_grad_norm": format_value(summary.get("final_grad_norm")),
            "wall_time_s": format_value(summary.get("wall_time_s")),
            "peak_memory_mb": format_value(summary.get("peak_memory_mb")),
            "status": status,
        })
        rows.append(row)
    return rows


def markdown_table(rows: List[Dict[str, str]]) -> str:
    if not rows:
        return "(no finished jobs)\n"
    columns = list(rows[0])
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_sweep_table(sweep_dir: Path, keys: List[str]) -> str:
    """Write summary.csv and summary.md for a finished sweep; return the Markdown."""
    rows = sweep_rows(sweep_dir, keys)
    table = markdown_table(rows)
    (sweep_dir / "summary.md").write_text(table)
    with (sweep_dir / "summary.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["job", *keys, *RESULT_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return table


class SweepSummary(Callback):
    """Hydra callback: run names for the jobs, and the results table when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = write_sweep_table(sweep_dir, swept_keys(config))
        print(f"\nSweep results ({sweep_dir}/summary.md):\n\n{table}")
        from ftharness.report import write_report  # plotting libraries only once a sweep has ended

        try:
            write_report(sweep_dir)
        except Exception as error:  # noqa: BLE001 -- the results are written; the report can be redrawn later
            log.warning("report not written (%s: %s); retry: python -m ftharness.report %s",
                        type(error).__name__, error, sweep_dir)
