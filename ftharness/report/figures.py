"""The report's figures: a sweep's curves by value and its numbers by value, and Optuna's plots of a study.

Colours follow the swept value on the scale the SwanLab board uses too (ftharness/ui/colours.py); a value run
with several seeds is one line (the mean) with a band from their min to their max (ftharness/report/seeds.py).
Runs that did not complete are marked where they ended.
"""

import logging
import math
import warnings
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from ftharness.contract import Status  # noqa: E402
from ftharness.report.runs import Run  # noqa: E402
from ftharness.report.seeds import ValueGroup, group_by_value, seed_count, spread_of  # noqa: E402
from ftharness.ui.colours import colours_for, use_log_scale  # noqa: E402


CURVES = [("loss", "train loss"), ("grad_norm", "grad_norm (before clipping)"), ("learning_rate", "learning rate"),
          ("eval_loss", "eval loss")]
FLAGGED = {Status.PRUNED, Status.DIVERGED, Status.FAILED, Status.OOM, Status.INTERRUPTED, Status.RUNNING,
           Status.WAITING}  # runs that did not complete: marked where they ended, red rows in the tables


OPTUNA_PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
                "parallel_coordinates": "plot_parallel_coordinate", "slices": "plot_slice"}


def _log_scale(key: str, runs: Sequence[Run]) -> bool:
    """The colour scale's rule (ftharness/ui/colours.py), for runs that all have a number."""
    numbers = [r.number for r in runs if math.isfinite(r.number)]
    return len(numbers) == len(runs) and use_log_scale(key, numbers)


def _spans_decades(values: Sequence[float]) -> bool:
    """Whether a log axis reads better: positive values more than a factor 10 apart."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > 10


def _colours(key: str, groups: Sequence[ValueGroup]) -> List[str]:
    """Each value's colour, on the scale the SwanLab board uses too (ftharness/ui/colours.py)."""
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


def optuna_figures(study: optuna.Study, out_dir: Path, notes: List[str]) -> Dict[str, Path]:
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


def sweep_figures(key: str, runs: Sequence[Run], out_dir: Path) -> Dict[str, Path]:
    """The sweep's own figures, drawn into `out_dir`: caption -> PNG."""
    seeds = seed_count(group_by_value(runs))
    lines = f"one line per value: the mean of {seeds} seeds, band min..max" if seeds > 1 else "one line per run"
    with plt.style.context("default"):  # importing Optuna's plots switches pyplot to ggplot for good
        return {f"Curves per step, {lines}": save(curves_figure(key, runs), out_dir / "curves.png"),
                "grad_norm and loss by value": save(by_value_figure(key, runs), out_dir / "by_value.png")}
