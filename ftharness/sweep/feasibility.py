"""Points that cannot fit, told before launch: a study's asked point whose memory estimate (ftharness/model/
memory.py, from the composed config alone: no weights load) is over `hydra.sweeper.memory_budget_gb` never runs.

The sweeper tells it at once as `wont_fit` (pruned, with a violated Optuna constraint whose value grows with the
estimate's excess), so TPE, GP and NSGA-II rank it below every trial that fit and stop asking its region; a trial
that ran out of memory anyway (`oom`) is told the same way (ftharness/sweep/loop.py INFEASIBLE). Such asks take up
their place in the study's budget, as a pruned trial does, but never its failure rate: they cost ~0 s. Measured
on the tiny model (benchmarks/feasibility.py): see the docstring of `benchmarks/feasibility.py`.
"""

import logging
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, open_dict, read_write

from ftharness.sweep.optuna_objects import SweepConfigError

log = logging.getLogger(__name__)

GB = 1e9
AUTO = "auto"


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes one trial may take, and where that figure comes from (said in every `wont_fit` reason)."""

    bytes: float
    source: str  # `hydra.sweeper.memory_budget_gb=24`, or the device's memory it was read from

    def over_budget(self, estimate) -> Optional["WontFit"]:
        """Why a trial with this memory estimate cannot run; None when it fits."""
        if estimate.total <= self.bytes:
            return None
        fixes = f"; would fit with {' '.join(estimate.fixes)}" if estimate.fixes else ""
        return WontFit(f"memory estimate {estimate.total / GB:.2f} GB is over the budget of {self.bytes / GB:.2f} "
                       f"GB ({self.source}){fixes}", estimate.total / self.bytes - 1)


@dataclass(frozen=True)
class WontFit:
    """A point over the budget: the reason its trial records, and by how much (the constraint's value, > 0)."""

    reason: str
    excess: float  # estimate / budget - 1


def check_budget_setting(value: Any) -> None:
    """`hydra.sweeper.memory_budget_gb` is `auto`, null or a positive number of GB (checked before anything runs)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (value is None or value == AUTO or (number and value > 0)):
        raise SweepConfigError(f"hydra.sweeper.memory_budget_gb={value!r}: allowed: auto (the device's memory), a "
                               "positive number of GB per trial, or null (no check)")


def memory_budget(value: Any, device: str, n_jobs: int) -> Optional[MemoryBudget]:
    """The budget a trial gets: the number given, or for `auto` the device's: one GPU's memory, or on the CPU
    the memory available now shared by the `n_jobs` trials that run at once. None: no check."""
    if value is None:
        return None
    if value != AUTO:
        return MemoryBudget(float(value) * GB, f"hydra.sweeper.memory_budget_gb={value}")
    import torch

    if device == "cuda":
        memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return MemoryBudget(float(memory), f"the memory of {torch.cuda.get_device_name()}")
    import psutil

    available = float(psutil.virtual_memory().available)
    share = f", shared by {n_jobs} parallel trials" if n_jobs > 1 else ""
    return MemoryBudget(available / n_jobs, f"the RAM available at the sweep's start{share}")


def task_config(composed: DictConfig) -> DictConfig:
    """A job's config as its task function sees it: the composed config less its `hydra` node."""
    with read_write(composed), open_dict(composed):
        del composed["hydra"]
    return composed


class FeasibilityCheck:
    """Estimates each asked point's memory from its composed config and says why it cannot run, if it cannot.

    The first estimate imports torch and transformers into the sweep process (~4 s once); a point whose config
    is invalid, or whose model config cannot be read (a hub id offline), is not judged: its job says why.
    """

    def __init__(self, setting: Any, n_jobs: int):
        self.setting, self.n_jobs = setting, n_jobs
        self.budget: Optional[MemoryBudget] = None
        self._resolved = False

    @property
    def enabled(self) -> bool:
        return self.setting is not None

    def wont_fit(self, cfg: DictConfig) -> Optional[WontFit]:
        """Why the trial of config `cfg` cannot fit; None when it fits or cannot be judged."""
        from ftharness.config.validation import ConfigError, validate
        from ftharness.model.hardware import resolve_hardware
        from ftharness.model.loading import read_model_config
        from ftharness.model.memory import estimate_memory, process_baseline

        try:
            validate(cfg)
            model_config = read_model_config(cfg)
        except (ConfigError, OSError, ValueError) as error:
            log.info("memory budget: a point not judged (%s)", error)
            return None
        hw = resolve_hardware(cfg)
        if not self._resolved:
            self.budget, self._resolved = memory_budget(self.setting, hw.device, self.n_jobs), True
        estimate = estimate_memory(cfg, hw, model_config, self.budget.bytes, process_baseline(hw.device))
        return self.budget.over_budget(estimate)

