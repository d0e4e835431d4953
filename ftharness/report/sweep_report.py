"""The comparison report of a sweep: curves by hyperparameter value, summary plots, the sweep's results table
(ftharness/report/results.py) and, for an Optuna study, Optuna's own plots. Written into the sweep folder when a
sweep ends, and on demand (`python -m ftharness.report`, ftharness/report/__main__.py).

Files: report.html (self-contained: plots embedded, no network resources), results.csv / results.md,
curves.png, by_value.png (one key) or by_key.png (several) and optuna_*.png (ftharness/report/figures.py). It
reads what the trials wrote, so it works with tracking disabled.

A sweep that runs each value with several seeds (ftharness/report/seeds.py) is shown by value: a curve is the mean
over the seeds with a band from their min to their max, the plots by value have min..max bars, a table by
value gives each number as `mean (min..max)`, and the finding's checks judge differences against that spread
(ftharness/report/findings.py). With one seed per value everything reads as one line, point and row per run.
"""

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import optuna

from ftharness.contract import TrialSummary
from ftharness.report.figures import FLAGGED, optuna_figures, sweep_figures
from ftharness.report.findings import FAILED, FINDINGS, HELD, NOISE, SYMBOLS, verdict
from ftharness.report.importances import Importances, key_importances, own_study
from ftharness.report.pages import html_page, html_table
from ftharness.report.results import Confirmation, Results, objective_names, sweep_results, value_rows, write_table
from ftharness.report.runs import Run, not_run_note
from ftharness.report.seeds import group_by_value, seed_count
from ftharness.ui.formatting import format_minutes, markdown_table


class ReportError(ValueError):
    """A sweep folder that gives no report (no runs in it)."""


@dataclass
class Report:
    title: str
    key: str  # the swept key the colours follow ("" for a single run)
    keys: List[str]  # every swept key, the colours' first
    runs: List[Run]
    table: List[Dict[str, str]]
    by_value: List[Dict[str, str]]  # a seeded sweep's table by value (mean and min..max); [] with one seed
    figures: Dict[str, Path]  # caption -> PNG
    finding: Optional[dict]  # the study's finding for this key: comparison, claim, verdict, checks
    notes: List[str]  # plots that could not be drawn, and why
    elapsed_s: Optional[float]  # from the first trial's start to the last one's end (studies), or summed
    confirmation: Optional[Confirmation] = None  # a study's best points run again with other seeds

    @property
    def keys_line(self) -> str:
        """The swept key, or a study's several keys and the one the colours follow."""
        if len(self.keys) < 2:
            return f"swept key `{self.key}`"
        return f"swept keys {', '.join(f'`{k}`' for k in self.keys)} (colours: `{self.key}`)"

    @property
    def seeds(self) -> int:
        return seed_count(group_by_value(self.runs))

    @property
    def runs_line(self) -> str:
        """`5 runs`, for a seeded sweep `15 runs (5 values x 3 seeds)`, for a confirmed study `18 runs (14 trials,
        4 confirmations)`."""
        if self.confirmation:
            confirmations = sum(run.confirms is not None for run in self.runs)
            return (f"{len(self.runs)} runs ({len(self.runs) - confirmations} trials, {confirmations} confirmations"
                    f"{not_run_note(self.runs)})")
        values = len(group_by_value(self.runs))
        grouped = f" ({values} values x {self.seeds} seeds)" if self.seeds > 1 else ""
        return f"{len(self.runs)} runs{grouped}{not_run_note(self.runs)}"

    @property
    def time_line(self) -> str:
        """`14.5 min of trials on cpu (AMD EPYC 7B13), fp32[, 1.8 min of it compiling]`: wall times compare only on
        the same hardware, and with train.compile the trials that compiled paid for the ones that reused the graphs."""
        where = sorted({_hardware(run.summary) for run in self.runs if run.summary.device})
        compiling = sum(run.summary.compile_time_s or 0 for run in self.runs)
        return f"{format_minutes(self.elapsed_s)} of trials" + (f" on {'; '.join(where)}" if where else "") + \
            (f", {format_minutes(compiling)} of it compiling" if compiling else "")


def _hardware(summary: TrialSummary) -> str:
    """`cpu (AMD EPYC 7B13), fp32`; older summaries lack the name."""
    name = f" ({summary.device_name})" if summary.device_name else ""
    precision = f", {summary.precision}" if summary.precision else ""
    return f"{summary.device}{name}{precision}"


def _elapsed(runs: Sequence[Run], study: Optional[optuna.Study]) -> Optional[float]:
    if study is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
        if trials:
            return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    times = [r.summary.wall_time_s for r in runs if r.summary.wall_time_s]
    return sum(times) if times else None


def build(sweep_dir: Path, results: Optional[Results] = None) -> Report:
    """Draw the figures of the sweep's runs into `sweep_dir` and return what the pages show."""
    results = results or sweep_results(sweep_dir)
    runs, study, keys = results.runs, results.study, results.keys
    if not runs:
        raise ReportError(f"no runs in {sweep_dir} (no summary.json or study.json found)")
    groups = group_by_value(runs)
    notes: List[str] = []
    own = own_study(study) if study is not None else None
    importances = key_importances(own, keys) if own is not None else Importances(list(keys), 0)
    key = importances.keys[0] if importances.keys else ""  # the colours follow the most important key
    figures, curves = {}, any(run.train or run.evals for run in runs)
    if curves:
        figures = sweep_figures(keys, runs, sweep_dir, importances)
    else:  # another Hydra app's jobs: ftharness's curves are not there to draw
        notes.append("No curves: the jobs wrote no metrics.jsonl (the objective is in the table and Optuna's plots, "
                     "with the values they reported per step, if any).")
    if own is not None:
        figures.update(optuna_figures(own, sweep_dir, notes, importances, curves))
    finding = None
    found = FINDINGS.get(" x ".join(sorted(keys)))  # one key: its name
    if found is not None:
        checks = found.checks(groups)
        finding = {"comparison": found.comparison, "claim": found.claim, "verdict": verdict(checks), "checks": checks}
    title = study.study_name if study is not None else sweep_dir.parent.name
    seeded = seed_count(groups) > 1 and results.confirmation is None  # a confirmation has a table of its own
    by_value = value_rows(key, groups, objective_names(runs, study)) if seeded else []
    return Report(title, key, list(keys), runs, results.rows, by_value, figures, finding, notes, _elapsed(runs, study),
                  results.confirmation)


def _finding_markdown(finding: dict) -> str:
    lines = [f"**The study found:** {finding['claim']}", "", f"**This sweep: {finding['verdict']}.**", ""]
    lines += [f"- {SYMBOLS[check.outcome]} {check.what}: {check.numbers}"
              + (f" ({check.outcome})" if check.outcome == NOISE else "") for check in finding["checks"]]
    return "\n".join(lines) + "\n"


def markdown_section(report: Report, image_dir: str = ".", figures: Optional[Sequence[str]] = None) -> str:
    """The report as Markdown; `figures` picks PNGs by file name (default: all of them)."""
    parts = [f"## {report.finding['comparison'] if report.finding else report.title}", "",
             f"Sweep `{report.title}`, {report.keys_line}: {report.runs_line}, "
             f"{report.time_line}.", ""]
    if report.finding:
        parts.append(_finding_markdown(report.finding))
    if report.by_value:
        parts.append(f"By value: mean (min..max) over the seeds that completed.\n\n{markdown_table(report.by_value)}")
    if report.confirmation:
        parts.append(f"{report.confirmation.heading}.\n\n{markdown_table(report.confirmation.rows)}")
    parts.append(markdown_table(report.table))
    parts += [f"![{caption}]({image_dir}/{png.name})\n" for caption, png in report.figures.items()
              if figures is None or png.name in figures]
    parts += [f"_{note}_\n" for note in report.notes]
    return "\n".join(parts)


def _embedded(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _html_table(rows: List[Dict[str, str]]) -> str:
    """A table whose runs that did not complete are red (a table by value has no state column)."""
    return html_table(rows, lambda row: "flagged" if row.get("state") in FLAGGED else "")


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}td.long{min-width:20em}
tr.flagged{background:#fde2e2;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:8px 0}.held{color:#186a1c}.not-held{color:#a31515}
.noise{color:#8a6100}"""
CHECK_CLASSES = {HELD: "held", FAILED: "not-held", NOISE: "noise"}


def write_html(report: Report, path: Path) -> None:
    """One page with everything inline (CSS and base64 PNGs): it opens offline and can be mailed as is."""
    finding = ""
    if report.finding:
        checks = "".join(f"<li class=\"{CHECK_CLASSES[c.outcome]}\">{SYMBOLS[c.outcome]} {html.escape(c.what)}: "
                         f"{html.escape(c.numbers)}{f' ({NOISE})' if c.outcome == NOISE else ''}</li>"
                         for c in report.finding["checks"])
        finding = (f"<h2>The study's finding: {html.escape(report.finding['comparison'])}</h2>"
                   f"<p>{html.escape(report.finding['claim'])}</p><p><b>This sweep: "
                   f"{html.escape(report.finding['verdict'])}.</b></p><ul>{checks}</ul>")
    figures = "".join(f"<h2>{html.escape(caption)}</h2><img alt=\"{html.escape(caption)}\" src=\"{_embedded(png)}\">"
                      for caption, png in report.figures.items())
    notes = "".join(f"<p><i>{html.escape(note)}</i></p>" for note in report.notes)
    by_value = (f"<h2>By value</h2><p>Mean (min..max) over the seeds that completed.</p>"
                f"{_html_table(report.by_value)}") if report.by_value else ""
    heading = f"<h1>{html.escape(report.title)}: {html.escape(', '.join(report.keys))}</h1>"
    summary = (f"<p>{report.runs_line}, {html.escape(report.time_line)}. Red rows: pruned, diverged, failed "
               "or not run (over the memory budget).</p>")
    confirmation = (f"<h2>Confirmation</h2><p><b>{html.escape(report.confirmation.verdict)}</b>: the objective over "
                    "each point's seeds, mean (min..max); the best point is the one with the best mean.</p>"
                    f"{_html_table(report.confirmation.rows)}") if report.confirmation else ""
    runs = f"<h2>Runs</h2>{_html_table(report.table)}"
    body = f"{heading}{summary}{finding}{by_value}{confirmation}{runs}{figures}{notes}"
    path.write_text(html_page(report.title, STYLE, body))


def write_report(sweep_dir: Path, results: Optional[Results] = None) -> Report:
    """Build the report of `sweep_dir` and write report.html, the PNGs and the results table there."""
    report = build(sweep_dir, results)
    write_table(report.table, sweep_dir)
    write_html(report, sweep_dir / "report.html")
    return report
