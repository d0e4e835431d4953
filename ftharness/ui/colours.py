"""A run's colour from its swept value: the one mapping that the report's figures and the SwanLab board share.

Numbers run along viridis (on a log scale for learning rates and for ranges spanning two decades or more),
other values take a qualitative palette in the order of their choices. A sweep knows its values before any
job starts (Hydra's sweep overrides, the Optuna search space): `sweep_scale` turns them into a `Scale`,
which travels to the jobs as JSON in an environment variable, so each job colours its own SwanLab run.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, Sequence

from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize, to_hex

from ftharness.ui.formatting import as_number

LOG_SCALE_KEYS = {"optim.lr"}  # also any positive numeric range spanning two decades or more
NUMBERS, CATEGORIES = "viridis", "tab10"
TOP = 0.9  # the top of viridis is a pale yellow, hard to see on white


@dataclass
class Scale:
    """How one key's values map to colours: a numeric range (`low`..`high`, `log`) or a list of `choices`."""

    key: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: List[str] = field(default_factory=list)

    def colour(self, value: Any) -> str:
        """`#rrggbb` for `value` (a number or, for choices, its text as the sweep wrote it)."""
        if self.choices:
            text = str(value)
            index = self.choices.index(text) if text in self.choices else len(self.choices)
            return to_hex(colormaps[CATEGORIES](index % 10))
        number, low, high = float(value), float(self.low), float(self.high)
        if high <= low:
            return to_hex(colormaps[NUMBERS](0.0))
        norm = (LogNorm if self.log else Normalize)(low, high, clip=True)
        return to_hex(colormaps[NUMBERS](TOP * float(norm(number))))

    def as_dict(self) -> dict:
        return asdict(self)


def use_log_scale(key: str, numbers: Sequence[float]) -> bool:
    """Log scale for learning rates and for positive values two decades or more apart."""
    if not numbers or min(numbers) <= 0:
        return False
    return key in LOG_SCALE_KEYS or max(numbers) / min(numbers) >= 100


def scale_of(key: str, values: Sequence[Any]) -> Scale:
    """The scale for values seen or planned: numeric when all are numbers, else categories in first-seen order."""
    numbers = [as_number(v) for v in values]
    if values and all(math.isfinite(n) for n in numbers):
        return Scale(key, min(numbers), max(numbers), use_log_scale(key, numbers))
    return Scale(key, choices=list(dict.fromkeys(str(v) for v in values)))


def colours_for(key: str, values: Sequence[Any]) -> List[str]:
    """One colour per value, on the scale those values span (the report's case: it has all runs at hand)."""
    scale = scale_of(key, values)
    if not scale.choices and scale.low == scale.high:  # one value (or all the same): tell the runs apart
        scale = Scale(key, choices=[str(i) for i in range(len(values))])
        return [scale.colour(str(i)) for i in range(len(values))]
    return [scale.colour(v) for v in values]


def sweep_scale(key: str, sweep: Any) -> Optional[Scale]:
    """The scale of one parsed Hydra sweep (choice / range / interval, `tag(log, ...)`), None for others."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags or use_log_scale(key, [sweep.start, sweep.end])
        return Scale(key, float(sweep.start), float(sweep.end), log)
    if isinstance(sweep, RangeSweep):
        count = max(0, math.ceil((sweep.stop - sweep.start) / sweep.step))
        values = [sweep.start + i * sweep.step for i in range(count)]
        return scale_of(key, values) if values else None
    if isinstance(sweep, ChoiceSweep):
        return scale_of(key, [Override._get_value_element_as_str(v) for v in sweep.list])
    return None
