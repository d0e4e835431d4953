"""A study's search space: the swept keys of `hydra.sweeper.params` and of the command line as Optuna
distributions, and a trial's sampled values as the overrides of its job.

`choice(...)` becomes a categorical distribution (a list choice, such as target modules, named by its override
text), `range(...)` an int or stepped float distribution over the values Hydra's range gives (its stop excluded, as
the basic sweeper runs them; `shuffle(range(...))`: the categorical of those values), `interval(...)` an int or
float distribution (`tag(log, ...)`: on a log scale). A key `a/b` samples the ratio of a to b and sets
a = ratio * b. With `hydra.sweeper.seeds` a grid repeats every point with each seed.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.utils import get_method
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ftharness.config.overrides import RATIO, override_text, parse_sweep
from ftharness.contract import SEED_KEY
from ftharness.sweep.optuna_objects import SweepConfigError
from ftharness.ui.console import last_line


class SearchSpace:
    """Optuna distributions for the swept keys, and the overrides that set a trial's sampled values; `seeds`,
    when given, repeat every point of a grid with each of those seeds."""

    def __init__(self, params: Dict[str, str], sweep_arguments: Sequence[Override], seeds: Sequence[int] = (),
                 fixed: Optional[Dict[str, str]] = None):
        self.fixed = fixed or {}  # the command line's one-value overrides: a ratio's base may be one of them
        sweeps = {key: parse_sweep(value) for key, value in params.items()}
        sweeps.update({o.get_key_element(): o.value() for o in sweep_arguments})
        self.labels: Dict[str, Dict[Any, str]] = {}  # categorical key -> {Optuna choice: override value}
        self.range_values: Dict[str, List[Any]] = {}  # range key -> its values, the grid sampler's
        self.distributions = {key: self._distribution(key, sweep) for key, sweep in sweeps.items()}
        if seeds:
            if SEED_KEY in self.distributions:
                raise SweepConfigError(f"hydra.sweeper.seeds={len(seeds)}: {SEED_KEY} is swept already; allowed: "
                                       f"seeds=1 with a swept {SEED_KEY}, or seeds without it")
            self.distributions[SEED_KEY] = CategoricalDistribution(list(seeds))
        for key in self.distributions:
            if RATIO in key and key.split(RATIO)[1] not in {*self.distributions, *self.fixed}:
                raise SweepConfigError(f"hydra.sweeper.params.{key}: {key.split(RATIO)[1]} must be swept too, or "
                                       "fixed on the command line")

    @property
    def searched_keys(self) -> List[str]:
        """The config keys whose values the trials vary (a ratio `a/b` varies `a`)."""
        return [key.split(RATIO)[0] for key in self.distributions]

    def _distribution(self, key: str, sweep: Any) -> BaseDistribution:
        if isinstance(sweep, ChoiceSweep):
            labels = {self._label(v): override_text(v) for v in sweep.list}
            self.labels[key] = labels
            return CategoricalDistribution(list(labels))
        if isinstance(sweep, RangeSweep):
            return self._range_distribution(key, sweep)
        if isinstance(sweep, IntervalSweep):
            return self._interval_distribution(key, sweep)
        raise SweepConfigError(f"{key}: use choice(...), range(...), interval(...) or tag(log, interval(...))")

    @staticmethod
    def _interval_distribution(key: str, sweep: IntervalSweep) -> BaseDistribution:
        """`interval(start, end)` as Optuna's int or float distribution, its bounds checked first (Optuna's own
        check met the user as a traceback)."""
        log_scale = "log" in sweep.tags
        text = f"interval({sweep.start}, {sweep.end})"
        if sweep.start > sweep.end:
            raise SweepConfigError(f"{key}={text}: allowed: a start no larger than the end")
        if log_scale and sweep.start <= 0:
            raise SweepConfigError(f"{key}=tag(log, {text}): allowed: a start above 0 (a log scale has no 0)")
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)

    def _range_distribution(self, key: str, sweep: RangeSweep) -> BaseDistribution:
        """The values of `range(start, stop, step)` as Optuna's int or stepped float distribution, which a sampler
        can model as numbers (TPE, GP, CMA-ES), where a categorical knows no order."""
        if sweep.step == 0:
            raise SweepConfigError(f"{key}=range({sweep.start},{sweep.stop},0): allowed: a step other than 0")
        values = list(sweep.range())
        if not values:
            raise SweepConfigError(f"{key}=range({sweep.start},{sweep.stop},{sweep.step}) has no values")
        if sweep.shuffle:
            return CategoricalDistribution(values)
        self.range_values[key] = values
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(low, high, step=step)
        return FloatDistribution(low, high, step=step)

    @staticmethod
    def _label(value: Any) -> Any:
        """Optuna's categorical choices are scalars: a list choice is named by its override text."""
        return value if value is None or isinstance(value, (bool, int, float, str)) else override_text(value)

    def grid(self) -> Dict[str, list]:
        """Every key's values, for the grid sampler (intervals have none)."""
        grid = {}
        for key, dist in self.distributions.items():
            if key in self.range_values:
                grid[key] = self.range_values[key]
            elif isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            else:
                raise SweepConfigError(f"grid sampler: {key} needs choice(...) or range(...), not an interval")
        return grid

    def overrides(self, params: Dict[str, Any]) -> List[str]:
        """`key=value` for each sampled parameter; a ratio `a/b` becomes `a=<ratio * b>`."""
        overrides = []
        for key, value in params.items():
            if RATIO in key:
                target, base = key.split(RATIO)
                overrides.append(f"{target}={_number(value * float(params.get(base, self.fixed.get(base))))}")
            else:
                overrides.append(f"{key}={self.labels.get(key, {}).get(value, override_text(value))}")
        return overrides


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def custom_space_function(path: Optional[str]) -> Optional[Callable]:
    """The function `hydra.sweeper.custom_search_space` names; a path that names none stops the sweep in one line."""
    if path is None:
        return None
    try:
        return get_method(path)
    except Exception as error:  # noqa: BLE001 -- Hydra raises ImportError, AttributeError or ValueError by the case
        raise SweepConfigError(f"hydra.sweeper.custom_search_space={path!r}: {last_line(error)}") from None
