"""What every figure of the report shares: its own Agg canvas, and when a log axis reads better."""

import math
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def canvas_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: it draws and saves without pyplot and without a display."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def spans_decades(values: Sequence[float]) -> bool:
    """Whether a log axis reads better: positive values more than a factor 10 apart."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > 10
