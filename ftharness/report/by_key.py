"""The figure a study of several keys is read from: grad_norm and eval loss against each searched key.

A line through a study's trials sorted by one key joins points that differ in the other keys (rank 8 beside rank
16, all-linear beside q/v only) and, once a pruner stops trials, values read at different steps. So each trial is
one point, never joined to another, in a row per searched key: grad_norm at the first rung (the step every trial
that trained reached, so pruned trials compare with completed ones), then grad_norm and eval loss at the end
(completed trials only). Within a row the points are coloured by the most important of the other keys and marked
by the next (ftharness/report/importances.py), with a colour bar or a legend of those keys' values, never of runs:
it reads the same at 100 trials. The best trial is ringed in black; a confirmed point is ringed in red, with a bar
from the min to the max over its seeds (the trial's own and its confirmations at the same horizon). The data of
each panel is computed first (`by_key_info`) and drawn from it (`by_key_figure`).
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ftharness.contract import Status
from ftharness.report.canvas import canvas_figure, spans_decades
from ftharness.report.importances import Importances
from ftharness.report.runs import Run, trained
from ftharness.ui.colours import NUMBERS, TOP, Scale, scale_of
from ftharness.ui.formatting import as_number, format_value

MARKERS = "os^Dvp"  # a marker per value of the marking key: a key with more values marks nothing
JITTER = 0.3  # the width over which a category's points spread, so that 100 trials on 3 values stay apart
TRAINED = (Status.COMPLETED, Status.PRUNED, Status.DIVERGED)  # trials with curves to read a rung from
Number = Callable[[Run], Optional[float]]


@dataclass
class Measure:
    """A number each panel of a column reads from a trial, and which trials it reads it from."""

    name: str
    number: Number
    states: Tuple[Status, ...]  # the trials it reads (others are named as left out)
    why: str  # why the others are left out

    @property
    def at_end(self) -> bool:
        return self.states == (Status.COMPLETED,)


@dataclass
class KeyPoint:
    """One trial in one panel."""

    trial: str  # the run's name, `trial 4`
    x: float  # its value of the row's key (a category's index, spread by JITTER)
    y: float
    colour: str
    marker: str


@dataclass
class SeedRange:
    """A confirmed point at the end: min..max of the number over its seeds, at its trial's x."""

    x: float
    y: float  # the trial's own value, ringed
    low: float
    high: float
    seeds: int


@dataclass
class ScatterPanel:
    measure: str  # `grad_norm at step 3`, `final grad_norm`, `eval loss at the end`
    left_out: str  # which trials the panel leaves out and why ("" when none)
    points: List[KeyPoint]
    best: Optional[KeyPoint]  # the study's best trial, when the panel shows it
    confirmed: List[SeedRange]
    log_y: bool

    @property
    def title(self) -> str:
        return f"{self.measure}: {len(self.points)} trials" + (f"\n(not drawn: {self.left_out})" if self.left_out
                                                                else "")


@dataclass
class KeyRow:
    """The panels of one searched key, and the keys its points are coloured and marked by."""

    key: str
    tick_labels: Optional[List[str]]  # a categorical key's values at x = 0, 1, ...; None for numbers
    log_x: bool
    colour: Optional[Scale]  # the colouring key's scale (None: a study of one key)
    markers: Dict[str, str]  # the marking key's values -> marker ({} when none marks)
    marker_key: str
    panels: List[ScatterPanel]


@dataclass
class ByKeyInfo:
    """What the figure by key shows: a row per searched key, in the importances' order."""

    order: str  # how the rows are ordered (by importance, over how many trials, or in search order)
    rung: int  # the step the first panel of each row reads grad_norm at
    best: str  # the best trial's name ("" when none completed)
    rows: List[KeyRow]


def rung_step(runs: Sequence[Run]) -> int:
    """The first rung: the last step of the shortest completed or pruned trial, which every trial that was not
    stopped by a fault reached (1 when none logged a grad_norm)."""
    ends = [run.series("grad_norm")[0][-1] for run in runs if run.state in (Status.COMPLETED, Status.PRUNED)
            and run.grad_norms]
    return min(ends, default=1)


def grad_norm_at(run: Run, step: int) -> Optional[float]:
    """The run's last finite grad_norm logged at or before `step`, None when it ended before `step`."""
    steps, values = run.series("grad_norm")
    if not steps or steps[-1] < step:
        return None
    earlier = [v for s, v in zip(steps, values) if s <= step and math.isfinite(v)]
    return earlier[-1] if earlier else None


def final_eval_loss(run: Run) -> Optional[float]:
    """The last eval loss after training began (step 0 is the base's)."""
    trained = [e["loss"] for e in run.evals if e["step"] > 0 and math.isfinite(e["loss"])]
    return trained[-1] if trained else None


def final_grad_norm(run: Run) -> Optional[float]:
    return run.grad_norms[-1] if run.grad_norms else None


def best_trial(runs: Sequence[Run]) -> Optional[Run]:
    """The completed trial with the best objective, in the direction its summary states."""
    valued = [r for r in runs if r.state == Status.COMPLETED and math.isfinite(r.summary.objective_value)]
    if not valued:
        return None
    sign = -1 if valued[0].summary.objective.direction == "maximize" else 1
    return min(valued, key=lambda r: sign * r.summary.objective_value)


def by_key_info(runs: Sequence[Run], importances: Importances) -> ByKeyInfo:
    """A row per searched key (most important first) of three scatter panels over the study's own trials (no
    confirmations, repeats or points never run): grad_norm at the first rung, then grad_norm and eval loss at the
    end; each panel says which trials it leaves out."""
    own = [r for r in trained(runs) if r.confirms is None]
    rung = rung_step(own)
    best = best_trial(own)
    measures = [Measure(f"grad_norm at step {rung}", lambda r: grad_norm_at(r, rung), TRAINED,
                        f"ended before step {rung}"),
                Measure("final grad_norm", final_grad_norm, (Status.COMPLETED,), "stopped early"),
                Measure("eval loss at the end", final_eval_loss, (Status.COMPLETED,), "stopped early")]
    rows = []
    for key in importances.keys:
        row = _row(key, own, [k for k in importances.keys if k != key])
        row.panels = [_panel(measure, own, row, best, runs) for measure in measures]
        rows.append(row)
    return ByKeyInfo(importances.order, rung, best.name if best else "", rows)


def _row(key: str, runs: Sequence[Run], others: Sequence[str]) -> KeyRow:
    """A key's row: its axis, and the keys that colour (the most important other) and mark (the next with at
    most len(MARKERS) values) its points."""
    values = [run.values.get(key, "") for run in runs]
    numeric = all(math.isfinite(as_number(v)) for v in values)
    scale = scale_of(key, values)
    colour = scale_of(others[0], [run.values.get(others[0], "") for run in runs]) if others else None
    marking = [k for k in others[1:] if len({run.values.get(k, "") for run in runs}) <= len(MARKERS)]
    marker_key = marking[0] if marking else ""
    choices = list(dict.fromkeys(run.values.get(marker_key, "") for run in runs)) if marker_key else []
    return KeyRow(key, None if numeric else [format_value(c) for c in scale.choices], numeric and scale.log, colour,
                  dict(zip(choices, MARKERS)), marker_key, [])


def _x(row: KeyRow, run: Run, index: int) -> float:
    """The run's value of the row's key; a category's index, spread by the run's place so points stay apart."""
    value = run.values.get(row.key, "")
    if row.tick_labels is None:
        return as_number(value)
    return row.tick_labels.index(format_value(value)) + JITTER * ((index % 7) / 6 - 0.5)


def _point(row: KeyRow, run: Run, index: int, y: float) -> KeyPoint:
    colour = row.colour.colour(run.values.get(row.colour.key, "")) if row.colour else "#1f77b4"
    return KeyPoint(run.name, _x(row, run, index), y, colour, row.markers.get(run.values.get(row.marker_key, ""), "o"))


def _panel(measure: Measure, own: Sequence[Run], row: KeyRow, best: Optional[Run], runs: Sequence[Run]
           ) -> ScatterPanel:
    """The trials of `own` that `measure` reads and that have its number; the others are named in `left_out` by
    how they ended; at the end, the confirmed points' ranges over their seeds."""
    points = [_point(row, run, index, y) for index, run in enumerate(own)
              if run.state in measure.states and (y := measure.number(run)) is not None]
    named = {p.trial for p in points}
    missing = [r.state for r in own if r.name not in named]
    left_out = ", ".join(f"{missing.count(s)} {s}" for s in dict.fromkeys(missing))
    shown_best = next((p for p in points if best is not None and p.trial == best.name), None)
    confirmed = _seed_ranges(row, measure.number, own, runs) if measure.at_end else []
    log_y = spans_decades([p.y for p in points] + [v for c in confirmed for v in (c.low, c.high)])
    return ScatterPanel(measure.name, f"{left_out} ({measure.why})" if left_out else "", points, shown_best,
                        confirmed, log_y)


def _seed_ranges(row: KeyRow, number: Number, own: Sequence[Run], runs: Sequence[Run]) -> List[SeedRange]:
    """Each confirmed trial's min..max of `number` over its own run and its confirmations of the same length."""
    ranges = []
    for index, trial in enumerate(own):
        confirmations = [r for r in runs if r.confirms is not None and r.label == trial.label
                         and r.summary.steps == trial.summary.steps]
        values = [v for v in map(number, [trial, *confirmations]) if v is not None]
        if confirmations and number(trial) is not None:
            ranges.append(SeedRange(_x(row, trial, index), number(trial), min(values), max(values), len(values)))
    return ranges


# ---- drawing --------------------------------------------------------------------------------------------


def _colour_map() -> ListedColormap:
    """viridis up to TOP, as the colours of ftharness/ui/colours.py use it."""
    return ListedColormap(colormaps[NUMBERS](np.linspace(0, TOP, 256)))


def draw_scale(figure: Figure, axes, scale: Scale) -> List[Line2D]:
    """A numeric key's colour bar beside `axes`; a categorical key's values as legend handles (returned)."""
    if scale.choices:
        return [Line2D([], [], color=scale.colour(c), marker="o", linestyle="", label=f"{scale.key}={format_value(c)}")
                for c in scale.choices]
    norm = (LogNorm if scale.log else Normalize)(scale.low, scale.high)
    mappable = figure.colorbar(ScalarMappable(norm, _colour_map()), ax=axes, pad=0.01, aspect=30)
    mappable.set_label(scale.key)
    return []


def _marker_handles(row: KeyRow) -> List[Line2D]:
    return [Line2D([], [], color="grey", marker=m, linestyle="", label=f"{row.marker_key}={format_value(v)}")
            for v, m in row.markers.items()]


RINGS = [Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=12, linestyle="",
                label="best trial"),
         Line2D([], [], color="red", marker="o", markerfacecolor="none", markersize=12, linestyle="-",
                label="confirmed point:\nmin..max over its seeds")]


def _draw_panel(axis, row: KeyRow, panel: ScatterPanel) -> None:
    for marker in dict.fromkeys(p.marker for p in panel.points):
        shown = [p for p in panel.points if p.marker == marker]
        axis.scatter([p.x for p in shown], [p.y for p in shown], c=[p.colour for p in shown], marker=marker, s=30,
                     alpha=0.8, edgecolors="white", linewidths=0.5)
    for seeds in panel.confirmed:
        axis.plot([seeds.x, seeds.x], [seeds.low, seeds.high], color="red", linewidth=1.5, marker="_")
        axis.plot(seeds.x, seeds.y, "o", markerfacecolor="none", markeredgecolor="red", markersize=12)
    if panel.best is not None:
        axis.plot(panel.best.x, panel.best.y, "o", markerfacecolor="none", markeredgecolor="black", markersize=15,
                  markeredgewidth=1.5)
    axis.set_title(panel.title, fontsize=9)
    axis.set_xlabel(row.key)
    if row.log_x:
        axis.set_xscale("log")
    if row.tick_labels is not None:
        axis.set_xticks(range(len(row.tick_labels)), row.tick_labels, rotation=15, fontsize=8)
    if panel.log_y:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)


def by_key_figure(info: ByKeyInfo) -> Figure:
    """The figure by key (`by_key_info`) drawn: a row per key, its colour bar or legend of keys on the right."""
    figure = canvas_figure(14, 3.6 * len(info.rows) + 0.6)
    axes = figure.subplots(len(info.rows), 3, squeeze=False)
    for row, row_axes in zip(info.rows, axes):
        for axis, panel in zip(row_axes, row.panels):
            _draw_panel(axis, row, panel)
        confirmed = any(panel.confirmed for panel in row.panels)
        rings = RINGS if confirmed else RINGS[:1]  # the red ring only where a confirmation drew one
        handles = (draw_scale(figure, row_axes, row.colour) if row.colour else []) + _marker_handles(row) + rings
        row_axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8,
                            borderaxespad=0, title=f"colour: {row.colour.key}" if row.colour else None,
                            title_fontsize=8)
    figure.suptitle(f"One point per trial, never joined; rows {info.order}", fontsize=10)
    return figure
