"""The one results table of a sweep, built from its runs (ftharness/report/runs.py): a row per run with its swept
values (and its seed, when the sweep repeats values with several seeds), state and reason, objective, test
accuracy, final loss and grad_norm, steps, wall time, tokens/s and peak memory. Written as `results.csv` and
`results.md` into the sweep folder, printed once when a sweep ends, and shown as it is by the report
(ftharness/report/sweep_report.py), which adds a table by value (mean and min..max over the seeds) for a seeded sweep.
Numbers go through the one formatter for people (ftharness/ui/formatting.py): 3 significant digits.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import optuna

from ftharness.contract import SEED_KEY, TrialSummary
from ftharness.report.runs import Run, load_runs, trained, varying_keys
from ftharness.report.seeds import ValueGroup
from ftharness.sweep.confirmation import confirmed_points
from ftharness.sweep.confirmation import verdict as confirmation_verdict
from ftharness.sweep.telling import metric_names
from ftharness.ui.formatting import as_number, format_value, markdown_table

VALUE_COLUMNS = ("test_accuracy", "final_loss", "wall_time_s", "peak_memory_mb")  # by value, after the objective


def seeds_vary(runs: Sequence[Run]) -> bool:
    return len({r.seed for r in runs}) > 1


def label_runs(runs: List[Run], keys: List[str]) -> List[Run]:
    """Set each run's label (its swept value, or `key=value` pairs when several keys vary) and number (the
    first swept key's value, when numeric); return the runs sorted by that value (then by seed) when every one
    is numeric."""
    for run in runs:
        parts = [format_value(run.values.get(k, "")) for k in keys]
        run.label = parts[0] if len(keys) == 1 else ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, parts))
        run.number = as_number(run.values.get(keys[0])) if keys else math.nan
    if runs and all(math.isfinite(r.number) for r in runs):
        return sorted(runs, key=lambda r: (r.number, as_number(r.seed)))
    return runs


def objective_names(runs: Sequence[Run], study: Optional[optuna.Study]) -> List[str]:
    """The study's metric names, else those the runs optimized (`objective.metric` of their summaries)."""
    stored = metric_names(study) if study is not None else None
    if stored:
        return stored
    names = dict.fromkeys(r.summary.objective.metric for r in runs if r.summary.objective)
    return [name for name in names if name] or ["objective"]


def table_rows(runs: Sequence[Run], keys: List[str], metrics: List[str]) -> List[Dict[str, str]]:
    """The results table: one row per run, the same columns for every sweep of ftharness trials (swept keys first,
    then the seed when it varies: a run's own, or its config's for a study's trials). The sweep of another Hydra
    app, whose jobs write no summary.json, gets the columns up to its objective(s) only."""
    rows, seeded = [], seeds_vary(runs)
    summaries = any(run.summary.status for run in runs)
    for run in runs:
        seed = {SEED_KEY: run.seed} if seeded else {}
        rows.append({
            "run": run.name, **{k: format_value(run.values.get(k)) for k in keys}, **seed,
            "state": run.state, "reason": run.reason, **{m: format_value(run.metric(m)) for m in metrics},
            **(_summary_cells(run.summary) if summaries else {}),
        })
    return rows


def _summary_cells(summary: TrialSummary) -> Dict[str, str]:
    """The columns of the table that an ftharness trial's summary.json fills."""
    return {
        "test_accuracy": format_value(summary.after.get("test_accuracy")),
        "final_loss": format_value(summary.final_loss),
        "final_grad_norm": format_value(summary.final_grad_norm),
        "steps": format_value(summary.steps),
        "wall_time_s": format_value(summary.wall_time_s),
        "tokens_per_s": format_value(summary.train_tokens_per_s),
        "peak_memory_mb": format_value(summary.peak_memory_mb),
    }


def value_rows(key: str, groups: Sequence[ValueGroup], metrics: List[str]) -> List[Dict[str, str]]:
    """The table by value of a seeded sweep: per value its seeds' states, then each number as its mean with the
    range min..max over the seeds that completed."""
    rows = []
    for group in groups:
        cells = {name: group.spread(lambda run, name=name: run.metric(name))
                 for name in dict.fromkeys([*metrics, *VALUE_COLUMNS])}
        rows.append({key or "value": group.label, "seeds": group.states,
                     **{name: cell.text(format_value) if cell else "" for name, cell in cells.items()}})
    return rows


@dataclass
class Confirmation:
    """A study's confirmed points (ftharness/sweep/confirmation.py): the verdict and a row per point, best first."""
    verdict: str
    rows: List[Dict[str, str]]

    @property
    def heading(self) -> str:
        return f"Confirmation: {self.verdict} (the objective over each point's seeds: mean (min..max))"


def confirmation_of(study: Optional[optuna.Study], metrics: List[str]) -> Optional[Confirmation]:
    """The confirmation table of a study whose best points ran again with other seeds; None when none did."""
    points = confirmed_points(study) if study is not None else []
    if not points:
        return None
    rows = [{"point": f"trial {p.trial.number}", **{k: format_value(v) for k, v in p.trial.params.items()},
             "seeds": str(len(p.values)), metrics[0]: p.spread.text(format_value),
             "without value": str(p.unfinished) if p.unfinished else ""} for p in points]
    return Confirmation(confirmation_verdict(study, points) or "one point confirmed", rows)


@dataclass
class Results:
    """A sweep's runs (labelled, in table order), its study if any, its results table and its confirmation."""
    runs: List[Run]
    study: Optional[optuna.Study]
    keys: List[str]  # the compared keys: those whose value differs between runs, the seed aside
    rows: List[Dict[str, str]]
    confirmation: Optional[Confirmation] = None


def results_of(runs: List[Run], study: Optional[optuna.Study] = None) -> Results:
    keys = varying_keys(trained(runs), ignore=SEED_KEY)  # the seed's runs are repeats of one value; a point told
    # without a job (a repeat) holds only its searched keys
    runs = label_runs(runs, keys)
    metrics = objective_names(runs, study)
    return Results(runs, study, keys, table_rows(runs, keys, metrics), confirmation_of(study, metrics))


def sweep_results(sweep_dir: Path) -> Results:
    """The runs of the sweep in `sweep_dir` (all of its study's trials when it ran one) and their table."""
    return results_of(*load_runs(sweep_dir))


def write_table(rows: List[Dict[str, str]], out_dir: Path) -> str:
    """Write results.csv and results.md into `out_dir`; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["run", "state"])
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    (out_dir / "results.md").write_text(table)
    return table
