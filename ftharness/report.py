"""The comparison report of a sweep: curves by hyperparameter value, summary plots, the sweep's results table
(ftharness/results.py) and, for an Optuna study, Optuna's own plots. Written into the sweep folder when a
sweep ends, and on demand:

    python -m ftharness.report outputs/multirun/lr-study/2026-11-25_10-00-00
    python -m ftharness.report --doc docs/study.md DIR [DIR ...]     the study write-up from several sweeps
    python -m ftharness.report --doc docs/study.md --update DIR       ... replacing only DIR's comparison

Files: report.html (self-contained: plots embedded, no network resources), results.csv / results.md,
curves.png, by_value.png and optuna_*.png. It reads what the trials wrote, so it works with tracking disabled.

A sweep that runs each value with several seeds (ftharness/seeds.py) is shown by value: a curve is the mean
over the seeds with a band from their min to their max, the plots by value have min..max bars, a table by
value gives each number as `mean (min..max)`, and the finding's checks judge differences against that spread
(ftharness/findings.py). With one seed per value everything reads as one line, point and row per run.
"""

import argparse
import base64
import html
import logging
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from ftharness.colours import colours_for, use_log_scale  # noqa: E402
from ftharness.findings import FAILED, FINDINGS, HELD, NOISE, SYMBOLS, verdict  # noqa: E402
from ftharness.results import Results, markdown_table, objective_names, sweep_results, value_rows, \
    write_table  # noqa: E402
from ftharness.runs import Run  # noqa: E402
from ftharness.seeds import ValueGroup, group_by_value, seed_count, spread_of  # noqa: E402

CURVES = [("loss", "train loss"), ("grad_norm", "grad_norm (before clipping)"), ("learning_rate", "learning rate"),
          ("eval_loss", "eval loss")]
FLAGGED = {"pruned", "diverged", "failed", "oom", "interrupted", "running", "waiting"}
DOC_FIGURES = ("curves.png", "by_value.png")  # the figures of a sweep that the study write-up shows
SEEDS_NOTE = (f"Each value ran with several seeds: its numbers read `mean (min..max)` over them, and a check holds "
              f"({SYMBOLS[HELD]}) only where the values differ beyond that spread; where the seeds' ranges overlap it "
              f"is {NOISE} ({SYMBOLS[NOISE]}), which counts neither as held ({SYMBOLS[HELD]}) nor as failed "
              f"({SYMBOLS[FAILED]}).")
OPTUNA_PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
                "parallel_coordinates": "plot_parallel_coordinate", "slices": "plot_slice"}


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
        """`5 runs`, or for a seeded sweep `15 runs (5 values x 3 seeds)`."""
        values = len(group_by_value(self.runs))
        return f"{len(self.runs)} runs" + (f" ({values} values x {self.seeds} seeds)" if self.seeds > 1 else "")

    @property
    def time_line(self) -> str:
        """`14.5 min of trials on cpu (AMD EPYC 7B13), fp32`: wall times compare only on the same hardware."""
        where = sorted({_hardware(run.summary) for run in self.runs if run.summary.get("device")})
        return f"{_minutes(self.elapsed_s)} of trials" + (f" on {'; '.join(where)}" if where else "")


def _hardware(summary: dict) -> str:
    """`cpu (AMD EPYC 7B13), fp32`; older summaries lack the name."""
    name = f" ({summary['device_name']})" if summary.get("device_name") else ""
    precision = f", {summary['precision']}" if summary.get("precision") else ""
    return f"{summary['device']}{name}{precision}"


def _log_scale(key: str, runs: Sequence[Run]) -> bool:
    """The colour scale's rule (ftharness/colours.py), for runs that all have a number."""
    numbers = [r.number for r in runs if math.isfinite(r.number)]
    return len(numbers) == len(runs) and use_log_scale(key, numbers)


def _spans_decades(values: Sequence[float]) -> bool:
    """Whether a log axis reads better: positive values more than a factor 10 apart."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > 10


def _colours(key: str, groups: Sequence[ValueGroup]) -> List[str]:
    """Each value's colour, on the scale the SwanLab board uses too (ftharness/colours.py)."""
    return colours_for(key, [group.runs[0].values.get(key, group.label) for group in groups])


def _legend_label(group: ValueGroup) -> str:
    """The value, and how its runs ended when one did not complete: `0.01 (diverged)`, `0.01 (2 completed, 1
    diverged)`."""
    label = group.label or group.runs[0].name
    return f"{label} ({group.states})" if any(r.state in FLAGGED for r in group.runs) else label


def _points(run: Run, metric: str, log_y: bool) -> Tuple[List[int], List[float]]:
    """A run's series; on a log axis without the values it cannot show (the first warmup step's lr is 0)."""
    steps, values = run.series(metric)
    kept = [(s, v) for s, v in zip(steps, values) if v > 0 or not log_y]
    return [s for s, _ in kept], [v for _, v in kept]


def _mean_band(runs: Sequence[Run], metric: str, log_y: bool) -> Tuple[List[int], List[float], List[float],
                                                                          List[float]]:
    """(steps, mean, min, max) over the runs that logged each step: one run's series is its own mean."""
    at: Dict[int, List[float]] = {}
    for run in runs:
        for step, value in zip(*_points(run, metric, log_y)):
            at.setdefault(step, []).append(value)
    steps = sorted(at)
    return steps, [mean(at[s]) for s in steps], [min(at[s]) for s in steps], [max(at[s]) for s in steps]


def _legend_title(key: str, seeds: int) -> Optional[str]:
    return f"{key}\nmean of {seeds} seeds,\nband: min..max" if seeds > 1 else (key or None)


def curves_figure(key: str, runs: Sequence[Run]) -> plt.Figure:
    """One panel per curve, one line per value coloured by it: the mean over its seeds, with a band from their
    min to their max (a value's mean is over the seeds that reached the step); a cross marks where a flagged
    run ended."""
    groups = group_by_value(runs)
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
    for axis, (metric, title) in zip(axes.flat, CURVES):
        log_y = _log_scale(key, runs) if metric == "learning_rate" else _spans_decades(
            [v for run in runs for v in run.series(metric)[1]])
        for group, colour in zip(groups, _colours(key, groups)):
            steps, middle, low, high = _mean_band(group.runs, metric, log_y)
            if not steps:
                continue
            axis.plot(steps, middle, color=colour, label=_legend_label(group), marker="." if len(steps) < 12 else None)
            if len(group.runs) > 1:
                axis.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
            for run in group.runs:
                ended = _points(run, metric, log_y)
                if run.state in FLAGGED and ended[0]:
                    axis.plot(ended[0][-1], ended[1][-1], "x", color="red", markersize=9)
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        if log_y:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, title=_legend_title(key, seed_count(groups)), loc="outside right upper",
                  fontsize=9)  # beside the panels
    return figure


def by_value_figure(key: str, runs: Sequence[Run]) -> plt.Figure:
    """Final / median / max grad_norm and final / best eval loss against the swept value (log x for lr): the
    mean over a value's seeds, with bars from their min to their max."""
    groups = [g for g in group_by_value(runs) if any(r.grad_norms for r in g.runs)]
    seeds = seed_count(groups)
    numeric = all(math.isfinite(g.number) for g in groups)
    x = [g.number for g in groups] if numeric else list(range(len(groups)))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    series = {left: [("final grad_norm", lambda r: r.grad_norms[-1]), ("median grad_norm", lambda r: r.median_grad_norm),
                     ("max grad_norm", lambda r: max(r.grad_norms))],
              right: [("final train loss", lambda r: r.losses[-1] if r.losses else None),
                      ("best eval loss", lambda r: r.best_eval_loss)]}
    colours = iter(plt.get_cmap("tab10").colors)  # one colour per series across both panels: one shared legend
    for axis, lines in series.items():
        plotted = []
        for name, value in lines:
            points = [(xi, spread) for xi, g in zip(x, groups)
                      if (spread := spread_of([r for r in g.runs if r.grad_norms], value))]
            xs, means = [p[0] for p in points], [p[1].mean for p in points]
            colour = next(colours)
            axis.plot(xs, means, marker="o", label=name, color=colour)
            if seeds > 1:
                bars = [[m - p[1].lo for m, p in zip(means, points)], [p[1].hi - m for m, p in zip(means, points)]]
                axis.errorbar(xs, means, yerr=bars, fmt="none", ecolor=colour, capsize=3, alpha=0.7)
            plotted += [v for p in points for v in (p[1].lo, p[1].hi)]
        for xi, group in zip(x, groups):
            if any(r.state in FLAGGED for r in group.runs):
                axis.axvline(xi, color="red", alpha=0.25, linestyle="--")
        if _spans_decades(plotted):
            axis.set_yscale("log")
        axis.set_xlabel(key)
        if numeric and _log_scale(key, [r for g in groups for r in g.runs]):
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(x, [g.label for g in groups], rotation=20)
        axis.grid(alpha=0.3)
    left.set_title("grad_norm by value (dashed: pruned / diverged / failed)")
    right.set_title("loss by value")
    handles = [h for axis in (left, right) for h in axis.get_legend_handles_labels()[0]]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9,  # below the panels
                  title=f"mean of {seeds} seeds, bars: min..max" if seeds > 1 else None, title_fontsize=9)
    return figure


def save(figure: plt.Figure, path: Path, dpi: int = 90) -> Path:
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _optuna_figures(study: optuna.Study, out_dir: Path, notes: List[str]) -> Dict[str, Path]:
    """Optuna's matplotlib plots; one that cannot be drawn (too few trials, one parameter) becomes a note."""
    from optuna.visualization import matplotlib as optuna_plots

    figures = {}
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" for choice() values
    for name, function in OPTUNA_PLOTS.items():
        if len(study.directions) > 1 and name == "history":
            continue
        try:
            with warnings.catch_warnings():  # "experimental" backend; tight_layout and the slices' colour bar
                warnings.simplefilter("ignore")
                axes = getattr(optuna_plots, function)(study)
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 4.5))
                figure.tight_layout()
            figures[f"Optuna: {name.replace('_', ' ')}"] = save(figure, out_dir / f"optuna_{name}.png", dpi=80)
        except Exception as error:  # noqa: BLE001 -- Optuna says why (e.g. "needs at least 2 completed trials")
            plt.close("all")
            notes.append(f"Optuna {name} plot not drawn: {type(error).__name__}: {error}")
    return figures


def _elapsed(runs: Sequence[Run], study: Optional[optuna.Study]) -> Optional[float]:
    if study is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
        if trials:
            return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    times = [r.summary.get("wall_time_s") for r in runs if r.summary.get("wall_time_s")]
    return sum(times) if times else None


def build(sweep_dir: Path, results: Optional[Results] = None) -> Report:
    """Draw the figures of the sweep's runs into `sweep_dir` and return what the pages show."""
    results = results or sweep_results(sweep_dir)
    runs, study, keys = results.runs, results.study, results.keys
    if not runs:
        raise SystemExit(f"ftharness.report: no runs in {sweep_dir} (no summary.json or study.json found)")
    key = keys[0] if keys else ""
    groups = group_by_value(runs)
    seeds = seed_count(groups)
    notes: List[str] = []
    lines = f"one line per value: the mean of {seeds} seeds, band min..max" if seeds > 1 else "one line per run"
    with plt.style.context("default"):  # importing Optuna's plots switches pyplot to ggplot for good
        figures = {f"Curves per step, {lines}": save(curves_figure(key, runs), sweep_dir / "curves.png"),
                   "grad_norm and loss by value": save(by_value_figure(key, runs), sweep_dir / "by_value.png")}
    if study is not None:
        figures.update(_optuna_figures(study, sweep_dir, notes))
    finding = None
    if len(keys) == 1 and key in FINDINGS:
        found = FINDINGS[key]
        checks = found.checks(groups)
        finding = {"comparison": found.comparison, "claim": found.claim, "verdict": verdict(checks), "checks": checks}
    title = study.study_name if study is not None else sweep_dir.parent.name
    by_value = value_rows(key, groups, objective_names(runs, study)) if seeds > 1 else []
    return Report(title, key, list(keys), runs, results.rows, by_value, figures, finding, notes, _elapsed(runs, study))


def _finding_markdown(finding: dict) -> str:
    lines = [f"**The study found:** {finding['claim']}", "", f"**This sweep: {finding['verdict']}.**", ""]
    lines += [f"- {SYMBOLS[check.outcome]} {check.what}: {check.numbers}"
              + (f" ({check.outcome})" if check.outcome == NOISE else "") for check in finding["checks"]]
    return "\n".join(lines) + "\n"


def _minutes(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def markdown_section(report: Report, image_dir: str = ".", figures: Optional[Sequence[str]] = None) -> str:
    """The report as Markdown; `figures` picks PNGs by file name (default: all of them)."""
    parts = [f"## {report.finding['comparison'] if report.finding else report.title}", "",
             f"Sweep `{report.title}`, {report.keys_line}: {report.runs_line}, "
             f"{report.time_line}.", ""]
    if report.finding:
        parts.append(_finding_markdown(report.finding))
    if report.by_value:
        parts.append(f"By value: mean (min..max) over the seeds that completed.\n\n{markdown_table(report.by_value)}")
    parts.append(markdown_table(report.table))
    parts += [f"![{caption}]({image_dir}/{png.name})\n" for caption, png in report.figures.items()
              if figures is None or png.name in figures]
    parts += [f"_{note}_\n" for note in report.notes]
    return "\n".join(parts)


def _embedded(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _html_table(rows: List[Dict[str, str]]) -> str:
    if not rows:
        return "<p>(no runs)</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = []
    for row in rows:
        flagged = row.get("state") in FLAGGED  # a table by value has no state column
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values())
        body.append(f"<tr class=\"{'flagged' if flagged else ''}\">{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}tr.flagged{background:#fde2e2;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:8px 0}.held{color:#186a1c}.failed{color:#a31515}
.noise{color:#8a6100}"""
CHECK_CLASSES = {HELD: "held", FAILED: "failed", NOISE: "noise"}


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
    path.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(report.title)}</title>"
                    f"<style>{STYLE}</style></head><body><h1>{html.escape(report.title)}: "
                    f"{html.escape(', '.join(report.keys))}"
                    f"</h1><p>{report.runs_line}, {html.escape(report.time_line)}. Red rows: pruned, "
                    f"diverged or failed runs.</p>{finding}{by_value}<h2>Runs</h2>{_html_table(report.table)}"
                    f"{figures}{notes}"
                    f"</body></html>")


def write_report(sweep_dir: Path, results: Optional[Results] = None) -> Report:
    """Build the report of `sweep_dir` and write report.html, the PNGs and the results table there."""
    report = build(sweep_dir, results)
    write_table(report.table, sweep_dir)
    write_html(report, sweep_dir / "report.html")
    return report


def _earlier_write_up(doc: Path) -> Tuple[Dict[str, Dict[str, str]], Dict[str, str]]:
    """The verdict rows and sections of the write-up at `doc`, by comparison, in its order (for --update)."""
    if not doc.exists():
        return {}, {}
    header, *sections = doc.read_text().split("\n## ")
    lines = [line for line in header.splitlines() if line.startswith("| ")]
    columns = lines[0][2:-2].split(" | ") if lines else []
    rows = [dict(zip(columns, line[2:-2].split(" | "))) for line in lines[1:]]
    return {row["comparison"]: row for row in rows}, {s.split("\n", 1)[0]: "## " + s for s in sections}


def _total_minutes(rows: Sequence[Dict[str, str]]) -> str:
    return f"{sum(float(r['wall time'].split()[0]) for r in rows if r['wall time'] != 'n/a'):.1f} min"


def write_study_doc(sweep_dirs: Sequence[Path], doc: Path, command: str, update: bool = False) -> None:
    """The study write-up: each sweep's finding, table and curves (PNGs copied next to the page; Optuna's
    plots of a one-key grid add nothing to them and stay in the sweep folders), and the study's run time:
    the sum of the sweeps' wall times. `update` replaces only these sweeps' comparisons in the write-up
    already at `doc` and keeps the others as an earlier run wrote them (re-running one comparison costs its
    trials, not the whole study's)."""
    reports = [write_report(sweep_dir) for sweep_dir in sweep_dirs]
    for report, sweep_dir in zip(reports, sweep_dirs):
        target = doc.parent / doc.stem / report.title
        target.mkdir(parents=True, exist_ok=True)
        for name in DOC_FIGURES:
            shutil.copy(sweep_dir / name, target / name)
    rows, sections = _earlier_write_up(doc) if update else ({}, {})
    kept = [name for name in sections if name not in {r.finding["comparison"] for r in reports if r.finding}]
    for r in reports:
        name = r.finding["comparison"] if r.finding else r.title
        sections[name] = markdown_section(r, f"{doc.stem}/{r.title}", DOC_FIGURES)
        if r.finding:
            rows[name] = {"comparison": name, "verdict": r.finding["verdict"], "wall time": _minutes(r.elapsed_s),
                          "runs": r.runs_line}
    models = sorted({f"{Path(run.summary['model_path']).name} ({run.summary['device']})"
                     for r in reports for run in r.runs if run.summary})
    seeds = SEEDS_NOTE + " " if any(r.seeds > 1 for r in reports) else ""
    earlier = (f"The sections of {', '.join(kept)} are kept from an earlier run of the study: the last run re-ran "
               f"only the other comparisons. The runs column says how many seeds each comparison had. " if kept else "")
    header = (f"# The study, reproduced\n\nGenerated by `{command}` from the runs of the sweeps below; do not "
              f"edit by hand. Each comparison is one preset in `sweeps/` (`python -m ftharness -m sweep=<preset>`), "
              f"here on {', '.join(models) or 'the configured model'}. The thresholds behind each verdict are "
              f"stated in its checks (ftharness/findings.py). {seeds}{earlier}Wall time: from the first trial's "
              f"start to the last one's end; the study's trials took {_total_minutes(list(rows.values()))} in all."
              f"\n\n{markdown_table(list(rows.values()))}")
    doc.write_text(header + "\n" + "\n".join(sections.values()))
    print(f"study write-up: {doc}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ftharness.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep (multirun) folders")
    parser.add_argument("--doc", type=Path, help="write the study write-up (Markdown) from all the sweeps here")
    parser.add_argument("--command", default="bash scripts/study.sh", help="the regenerating command, for --doc")
    parser.add_argument("--update", action="store_true", help="with --doc: replace only these sweeps' comparisons "
                                                               "in the write-up, keep the others")
    args = parser.parse_args(argv)
    if args.doc:
        write_study_doc(args.sweep_dirs, args.doc, args.command, args.update)
        return
    for sweep_dir in args.sweep_dirs:
        write_report(sweep_dir)
        print(f"report: {sweep_dir / 'report.html'}")


if __name__ == "__main__":
    main()
