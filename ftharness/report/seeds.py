"""Runs of one value with several seeds, and their numbers as a mean with its range.

A comparison preset runs every value with `hydra.sweeper.seeds` seeds (`seed`, `seed + 1`, ...): the seed is
not a compared key, and runs that differ only in it are repeats of one value. The report and the findings
compare values: each number of a value is the mean over its seeds with their range, min..max (with three
seeds a standard deviation says no more than the range, and the range is what "beyond seed noise" compares,
see ftharness/report/findings.py). A value with one seed reads as that run's number, as before seeds existed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from statistics import mean
from typing import Callable, List, Optional, Sequence, Tuple

from ftharness.contract import Status
from ftharness.report.runs import Run
from ftharness.ui.formatting import number_of

Number = Callable[[Run], Optional[float]]


@dataclass(frozen=True)
class Spread:
    """One number of a value over its seeds."""

    values: Tuple[float, ...]

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def text(self, number_format: Callable[[float], str]) -> str:
        """`0.0289` for one seed, `0.0289 (0.0271..0.0302)` (mean, then min..max) for several."""
        if len(self.values) == 1:
            return number_format(self.values[0])
        return f"{number_format(self.mean)} ({number_format(self.lo)}..{number_format(self.hi)})"


def spread_of(runs: Sequence[Run], number: Number) -> Optional[Spread]:
    """The spread of `number` over `runs`, leaving out runs where it is None or not finite (None if none is)."""
    values = [v for v in (number(r) for r in runs) if v is not None and math.isfinite(v)]
    return Spread(tuple(values)) if values else None


@dataclass
class ValueGroup:
    """The runs of one value of the compared key, one per seed."""

    label: str  # the value, as the runs' label says it
    number: float  # the value as a number (NaN for categories)
    runs: List[Run] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        """The seeds its runs trained with: a dead trial and its retry are two runs of one seed."""
        return len({r.seed for r in self.runs})

    @property
    def finished(self) -> List[Run]:
        return [r for r in self.runs if r.state == Status.COMPLETED]

    def spread(self, number: Number) -> Optional[Spread]:
        """`number` over the seeds that completed."""
        return spread_of(self.finished, number)

    @property
    def states(self) -> str:
        """`completed`, or for several seeds how many ended how: `2 completed, 1 diverged`."""
        if len(self.runs) == 1:
            return self.runs[0].state
        states = [r.state for r in self.runs]
        return ", ".join(f"{states.count(state)} {state}" for state in dict.fromkeys(states))


def group_by_value(runs: Sequence[Run]) -> List[ValueGroup]:
    """The labelled runs (ftharness/report/results.py `label_runs`) grouped by value, in the order the values first
    appear; within a value, in the runs' order."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run.label, ValueGroup(run.label, run.number)).runs.append(run)
    return list(groups.values())


def seeds_phrase(groups: Sequence[ValueGroup], unit: str = "value") -> str:
    """What a mean over a value's runs rests on: `the mean of 3 seeds` when every value ran with as many, else each
    count and how many values have it, `the mean of its seeds (3 seeds for 2 values, 1 seed for 12 values)`: a
    study's confirmed points have several seeds, its other trials one."""
    counts = Counter(g.seeds for g in groups)
    if len(counts) == 1:
        seeds, = counts
        return f"the mean of {seeds} seeds" if seeds > 1 else "one seed"
    return "the mean of its seeds ({})".format(", ".join(
        f"{number_of(seeds, 'seed')} for {number_of(count, unit)}"
        for seeds, count in sorted(counts.items(), reverse=True)))


def seed_count(groups: Sequence[ValueGroup]) -> int:
    """The most seeds any value ran with (1 for a sweep without repeats)."""
    return max((g.seeds for g in groups), default=1)
