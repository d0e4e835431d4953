"""The report's figures: a sweep's curves by value, its numbers by value (one key) or the figure by key (several:
ftharness/report/by_key.py), and Optuna's plots of a study's own trials (ftharness/report/importances.py).

Colours follow the swept value on the scale the SwanLab board uses too (ftharness/ui/colours.py); a value run
with several seeds is one line (the mean) with a band from their min to their max (ftharness/report/seeds.py), and
the headings say how many seeds each mean rests on where values differ. A study of several keys colours its curves
by its most important key and shows that key's colour bar, not a legend entry per point. Runs that did not complete
are marked where they ended. Each figure's data is computed first, as a named result (`CurvesInfo`, `ByValueInfo`,
`ByKeyInfo`), and drawn from it; the figures draw on their own Agg canvas (files only, no display), not through
pyplot, so importing this module sets no backend for anyone.
"""

import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import optuna
from matplotlib import colormaps, style
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ftharness.contract import Status
from ftharness.lazy import optuna_plots
from ftharness.report.by_key import ByKeyInfo, by_key_figure, by_key_info, draw_scale
from ftharness.report.canvas import canvas_figure, spans_decades
from ftharness.report.importances import IMPORTANCE_FLOOR, STUDY_NUMBERS, Importances
from ftharness.report.runs import Run, trained
from ftharness.report.seeds import Spread, ValueGroup, group_by_value, seed_count, seeds_phrase, spread_of
from ftharness.ui.colours import Scale, colours_for, scale_of, use_log_scale

CURVES = [("loss", "train loss"), ("grad_norm", "grad_norm (before clipping)"), ("learning_rate", "learning rate"),
          ("eval_loss", "eval loss")]
FLAGGED = {Status.PRUNED, Status.DIVERGED, Status.FAILED, Status.OOM, Status.WONT_FIT, Status.INTERRUPTED,
           Status.RUNNING, Status.WAITING}  # runs that did not complete: marked where they ended, red rows in tables
OPTUNA_PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
                "parallel_coordinates": "plot_parallel_coordinate", "slices": "plot_slice",
                "intermediate_values": "plot_intermediate_values"}  # the last: only where no curves are drawn
VALUES_BY_KEY = ("by_key.png", "by_value.png")  # the figure of numbers against the searched keys: several, one
COLOUR_BAR_MARGIN = 0.88  # the share of a figure's width its panels keep when a colour bar goes on the right
BY_VALUE = {  # per panel, the numbers of a run drawn against its value
    "grad_norm by value (dashed: pruned / diverged / failed)": [
        ("final grad_norm", lambda r: r.grad_norms[-1]), ("median grad_norm", lambda r: r.median_grad_norm),
        ("max grad_norm", lambda r: max(r.grad_norms))],
    "loss by value": [("final train loss", lambda r: r.losses[-1] if r.losses else None),
                      ("best eval loss", lambda r: r.best_eval_loss)]}


def _log_scale(key: str, runs: Sequence[Run]) -> bool:
    """The colour scale's rule (ftharness/ui/colours.py), for runs that all have a number."""
    numbers = [r.number for r in runs if math.isfinite(r.number)]
    return len(numbers) == len(runs) and use_log_scale(key, numbers)


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


def _legend_title(key: str, groups: Sequence[ValueGroup]) -> Optional[str]:
    """The key, and what a line is where a value ran with several seeds."""
    return f"{key}\n{seeds_phrase(groups)},\nband: min..max" if seed_count(groups) > 1 else (key or None)


# ---- curves per step ------------------------------------------------------------------------------------


@dataclass
class CurveLine:
    """One value's curve in one panel: the mean over its runs at each step, and their min..max."""

    label: str  # the value, and how its runs ended when one did not complete
    colour: str
    steps: List[int]
    mean: List[float]
    low: List[float]
    high: List[float]
    band: bool  # several runs (seeds): the min..max band is drawn
    ends: List[Tuple[int, float]]  # where its runs that did not complete ended


@dataclass
class CurvesPanel:
    title: str
    log_y: bool
    lines: List[CurveLine]


@dataclass
class CurvesInfo:
    """What the curves figure shows: a panel per curve (train loss, grad_norm, learning rate, eval loss)."""

    panels: List[CurvesPanel]
    legend_title: Optional[str]
    scale: Optional[Scale] = None  # a study of several keys: the legend shows this key's colours, not the lines


def curves_info(key: str, runs: Sequence[Run], by_scale: bool = False) -> CurvesInfo:
    """One panel per curve, one line per value (a point of several keys) coloured by `key`: the mean over its
    seeds, with a band from their min to their max (a value's mean is over the seeds that reached the step).
    `by_scale`: the legend is `key`'s colour scale, which reads at 100 points where a line per point does not."""
    groups = group_by_value(runs)
    values = [group.runs[0].values.get(key, group.label) for group in groups]
    colours = colours_for(key, values)
    panels = []
    for metric, title in CURVES:
        log_y = _log_scale(key, runs) if metric == "learning_rate" else spans_decades(
            [v for run in runs for v in run.series(metric)[1]])
        lines = []
        for group, colour in zip(groups, colours):
            steps, middle, low, high = _mean_band(group.runs, metric, log_y)
            if steps:
                ended = [_points(run, metric, log_y) for run in group.runs if run.state in FLAGGED]
                lines.append(CurveLine(_legend_label(group), colour, steps, middle, low, high, group.seeds > 1,
                                       [(s[-1], v[-1]) for s, v in ended if s]))
        panels.append(CurvesPanel(title, log_y, lines))
    return CurvesInfo(panels, _legend_title(key, groups), scale_of(key, values) if by_scale else None)


def curves_figure(key: str, runs: Sequence[Run], by_scale: bool = False) -> Figure:
    """The curves (`curves_info`) drawn: a cross marks where a flagged run ended; the legend (a line per value, or
    the colour scale of `key`) beside the panels."""
    info = curves_info(key, runs, by_scale)
    figure = canvas_figure(12, 8)
    axes = figure.subplots(2, 2)
    for axis, panel in zip(axes.flat, info.panels):
        for line in panel.lines:
            axis.plot(line.steps, line.mean, color=line.colour, label=line.label,
                      marker="." if len(line.steps) < 12 else None)
            if line.band:
                axis.fill_between(line.steps, line.low, line.high, color=line.colour, alpha=0.2, linewidth=0)
            for step, value in line.ends:
                axis.plot(step, value, "x", color="red", markersize=9)
        axis.set_title(panel.title)
        axis.set_xlabel("optimizer step")
        if panel.log_y:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    if info.scale is not None:
        handles = draw_scale(figure, axes, info.scale)
        if handles:
            figure.legend(handles=handles, loc="outside right upper", fontsize=9)
        return figure
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, title=info.legend_title, loc="outside right upper", fontsize=9)
    return figure


# ---- numbers by value -----------------------------------------------------------------------------------


@dataclass
class ValueSeries:
    """One number (final grad_norm, best eval loss, ...) against the swept value: its mean over a value's seeds,
    and their min..max."""

    name: str
    colour: Tuple[float, float, float]
    x: List[float]
    spreads: List[Spread]

    @property
    def means(self) -> List[float]:
        return [s.mean for s in self.spreads]


@dataclass
class ValuePanel:
    title: str
    series: List[ValueSeries]
    log_y: bool


@dataclass
class ByValueInfo:
    """What the by-value figure shows: grad_norm and loss numbers against the swept value."""

    key: str
    x: List[float]  # the values, or 0, 1, ... for categories
    tick_labels: Optional[List[str]]  # the categories' labels; None for numbers
    log_x: bool
    flagged_x: List[float]  # values with a run that did not complete: dashed
    bars: bool  # several seeds: min..max bars
    legend_title: Optional[str]
    panels: List[ValuePanel]


def by_value_info(key: str, runs: Sequence[Run]) -> ByValueInfo:
    """Final / median / max grad_norm and final / best eval loss against the swept value (log x for lr): the
    mean over a value's seeds, with bars from their min to their max."""
    groups = [g for g in group_by_value(runs) if any(r.grad_norms for r in g.runs)]
    seeds = seed_count(groups)
    phrase = seeds_phrase(groups)
    numeric = all(math.isfinite(g.number) for g in groups)
    x = [g.number for g in groups] if numeric else list(range(len(groups)))
    colours = iter(colormaps["tab10"].colors)  # one colour per series across both panels: one shared legend
    panels = []
    for title, numbers in BY_VALUE.items():
        series = [_value_series(name, next(colours), x, groups, number) for name, number in numbers]
        panels.append(ValuePanel(title, series, spans_decades([v for s in series for p in s.spreads
                                                                for v in (p.lo, p.hi)])))
    return ByValueInfo(key, x, None if numeric else [g.label for g in groups],
                       numeric and _log_scale(key, [r for g in groups for r in g.runs]),
                       [xi for xi, g in zip(x, groups) if any(r.state in FLAGGED for r in g.runs)], seeds > 1,
                       f"{phrase}, bars: min..max" if seeds > 1 else None, panels)


def _value_series(name: str, colour: Tuple[float, float, float], x: List[float], groups: Sequence[ValueGroup],
                  number: Callable[[Run], Optional[float]]) -> ValueSeries:
    points = [(xi, spread) for xi, g in zip(x, groups) if (spread := spread_of([r for r in g.runs if r.grad_norms],
                                                                                number))]
    return ValueSeries(name, colour, [p[0] for p in points], [p[1] for p in points])


def by_value_figure(key: str, runs: Sequence[Run]) -> Figure:
    """The numbers by value (`by_value_info`) drawn, with one legend below the panels."""
    info = by_value_info(key, runs)
    figure = canvas_figure(12, 5)
    axes = figure.subplots(1, 2)
    for axis, panel in zip(axes, info.panels):
        for series in panel.series:
            means = series.means
            axis.plot(series.x, means, marker="o", label=series.name, color=series.colour)
            if info.bars:
                bars = [[m - s.lo for m, s in zip(means, series.spreads)],
                        [s.hi - m for m, s in zip(means, series.spreads)]]
                axis.errorbar(series.x, means, yerr=bars, fmt="none", ecolor=series.colour, capsize=3, alpha=0.7)
        for xi in info.flagged_x:
            axis.axvline(xi, color="red", alpha=0.25, linestyle="--")
        if panel.log_y:
            axis.set_yscale("log")
        axis.set_xlabel(info.key)
        if info.log_x:
            axis.set_xscale("log")
        if info.tick_labels is not None:
            axis.set_xticks(info.x, info.tick_labels, rotation=20)
        axis.grid(alpha=0.3)
        axis.set_title(panel.title)
    handles = [h for axis in axes for h in axis.get_legend_handles_labels()[0]]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9,
                  title=info.legend_title, title_fontsize=9)
    return figure


# ---- the files ------------------------------------------------------------------------------------------


def sweep_figures(keys: Sequence[str], runs: Sequence[Run], out_dir: Path, importances: Importances
                  ) -> Dict[str, Path]:
    """The sweep's own figures, drawn into `out_dir`: caption -> PNG. One key: curves and numbers by value;
    several: curves coloured by the most important key, and the figure by key (ftharness/report/by_key.py)."""
    key, runs = importances.keys[0] if importances.keys else "", trained(runs)
    groups = group_by_value(runs)
    several = len(keys) > 1 and len(groups) > 1  # (one point: `keys` holds all of its keys)
    unit = "point" if several else "value"
    lines = f"one line per {unit}: {seeds_phrase(groups, unit)}, band min..max" if seed_count(groups) > 1 \
        else "one line per run"
    colours = f", coloured by {key}" if several else ""
    with style.context("default"):  # importing Optuna's plots switches matplotlib to ggplot for good
        curves = out_dir / "curves.png"
        curves_figure(key, runs, by_scale=several).savefig(curves, dpi=90)
        figures = {f"Curves per step, {lines}{colours}": curves}
        if not several:
            by_value = out_dir / VALUES_BY_KEY[1]
            by_value_figure(key, runs).savefig(by_value, dpi=90)
            return {**figures, "grad_norm and loss by value": by_value}
        info = by_key_info(runs, importances)
        by_key = out_dir / VALUES_BY_KEY[0]
        by_key_figure(info).savefig(by_key, dpi=80)
    return {**figures, by_key_caption(info): by_key}


def by_key_caption(info: ByKeyInfo) -> str:
    """What the figure by key draws, and what it leaves out."""
    best = f"; black ring: the best, {info.best}" if info.best else ""
    return (f"grad_norm and eval loss by key, rows {info.order}: one point per trial of the study (one seed), at "
            f"step {info.rung} (the first rung) and at the end (completed trials); red ring and bar: a confirmed "
            f"point, min..max over its seeds{best}; confirmation runs are not drawn as trials")


def optuna_figures(own: optuna.Study, out_dir: Path, notes: List[str], importances: Importances,
                   curves: bool = True) -> Dict[str, Path]:
    """Optuna's matplotlib plots of a study's own trials (`own`, ftharness/report/importances.py `own_study`:
    confirmations apart); one that cannot be drawn (too few trials, one parameter) becomes a note, and so do
    importances below IMPORTANCE_FLOOR. Without the report's own `curves` (another app's jobs), the values its
    trials reported per step (`trial.report`) are drawn by Optuna, where there are any."""
    trials = len(own.trials)
    reported = not curves and any(t.intermediate_values for t in own.trials)
    figures = {}
    for name, function in OPTUNA_PLOTS.items():
        if (len(own.directions) > 1 and name == "history") or (name == "intermediate_values" and not reported):
            continue
        if name == "importances" and importances.points < IMPORTANCE_FLOOR:
            notes.append(f"Optuna importances not drawn: {importances.points} completed trials of the study; "
                         f"importances drawn from {IMPORTANCE_FLOOR} up (fewer: their best 10 % is one trial)")
            continue
        path = out_dir / f"optuna_{name}.png"
        if _optuna_plot(own, function, path, notes, own.user_attrs.get(STUDY_NUMBERS)):
            rests_on = (f"{importances.points} completed trials" if name == "importances"
                        else f"the study's {trials} trials")
            figures[f"Optuna: {name.replace('_', ' ')} ({rests_on}; confirmations apart)"] = path
    return figures


def _fit(figure: Figure) -> None:
    """Lay the panels out tightly, beside the colour bar when there is one: tight_layout alone spreads them under
    it (the slices' bar covered their last panel; constrained layout fails on Optuna's figures)."""
    bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    figure.tight_layout(rect=(0, 0, COLOUR_BAR_MARGIN if bars else 1, 1))
    for bar in bars:
        bar.set_position((COLOUR_BAR_MARGIN + 0.02, 0.15, 0.02, 0.7))


def name_trials(figure: Figure, numbers: List[int]) -> None:
    """Name the trials in Optuna's plot of a study copy by their numbers in the study, the numbers the report's table
    shows: its legend entries (`Trial3` -> `trial 4`), and the ticks of an axis or colour bar labelled `Trial` (the
    history's x axis, the slices' colours)."""
    legends = figure.legends + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    for text in (text for legend in legends for text in legend.get_texts()):
        if match := re.fullmatch(r"Trial(\d+)", text.get_text()):
            text.set_text(f"trial {numbers[int(match[1])]}")
    in_study = FuncFormatter(lambda x, _: str(numbers[int(x)]) if x == int(x) and 0 <= x < len(numbers) else "")
    for axis in (a for axes in figure.axes for a in (axes.xaxis, axes.yaxis) if a.get_label_text() == "Trial"):
        axis.set_major_locator(MaxNLocator(integer=True))
        axis.set_major_formatter(in_study)


def _optuna_plot(study: optuna.Study, function: str, path: Path, notes: List[str],
                 numbers: Optional[List[int]] = None) -> bool:
    """Draw one of Optuna's plots into `path`; False, with a note, when Optuna cannot. Its trials are named by
    `numbers`, their numbers in the study the report's table shows (`name_trials`)."""
    pyplot, plots = optuna_plots()
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" for choice() values
    try:
        with warnings.catch_warnings():  # the "experimental" backend
            warnings.simplefilter("ignore")
            axes = getattr(plots, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            if numbers:
                name_trials(figure, numbers)
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 4.5))
            _fit(figure)
            figure.savefig(path, dpi=80)
        pyplot.close(figure)
        return True
    except Exception as error:  # noqa: BLE001 -- Optuna says why (e.g. "needs at least 2 completed trials")
        pyplot.close("all")
        notes.append(f"Optuna {path.stem.removeprefix('optuna_')} plot not drawn: {type(error).__name__}: {error}")
        return False
