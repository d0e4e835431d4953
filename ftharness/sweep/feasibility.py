"""Points that cannot fit, told before launch: a study's asked point whose memory estimate (ftharness/model/
memory.py, from the composed config alone: no weights load) is over `hydra.sweeper.memory_budget_gb` never runs.

The sweeper tells it at once as `wont_fit` (pruned, with a violated Optuna constraint whose value grows with the
estimate's excess), so TPE, GP and NSGA-II rank it below every trial that fit and stop asking its region; a trial
that ran out of memory anyway (`oom`) is told the same way (ftharness/sweep/loop.py INFEASIBLE). Such asks cost ~0
s and use up neither the study's n_trials (it asks once more for each, up to n_trials more: it trains n_trials
points unless more asks than that were over the budget; a grid's point is asked once) nor its failure rate.

The same check on its own, for planning (which batch sizes fit a 24 GB GPU?), without weights: only the model's
config.json is read, e.g. of a 7B shape written by `python benchmarks/random_model.py deepseek-llm-7b DIR
--config-only`:
    python -m ftharness.sweep.feasibility --budget-gb 24 model=deepseek-llm-7b-chat model.name_or_path=DIR \
        train.device=cuda train.precision=bf16 train.per_device_batch_size=1,2,4,8,16 data.max_length=2048
"""

import argparse
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, open_dict, read_write

from ftharness.contract import Status
from ftharness.sweep.optuna_objects import SweepConfigError

log = logging.getLogger(__name__)

GB = 1e9
AUTO = "auto"
MODEL_KEY = "model"  # the config node whose memory a point's estimate needs


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

    The first estimate imports torch and transformers into the sweep process (10.5 s on this 2-core CPU shared by
    three jobs; the basic launcher's in-process jobs import them anyway), later ones take ~0.35 s a point, 0.3 s
    of it composing its config. A point whose config is invalid, or whose model config cannot be read (a hub id
    offline), is not judged: its job says why.
    """

    def __init__(self, setting: Any, n_jobs: int):
        self.setting, self.n_jobs = setting, n_jobs
        self.budget: Optional[MemoryBudget] = None  # resolved at the first point (`auto` needs its device)

    def applies_to(self, cfg: DictConfig) -> bool:
        """Whether the points of a sweep of config `cfg` are checked: a budget is set and the config has a model to
        estimate (the config of a Hydra app other than ftharness has none)."""
        return self.setting is not None and MODEL_KEY in cfg

    def wont_fit(self, cfg: DictConfig) -> Optional[WontFit]:
        """Why the trial of config `cfg` cannot fit; None when it fits or cannot be judged."""
        from ftharness.config.validation import ConfigError, validate
        from ftharness.model.hardware import resolve_hardware

        try:
            validate(cfg)
            hw = resolve_hardware(cfg)
            self.budget = self.budget or memory_budget(self.setting, hw.device, self.n_jobs)
            estimate = point_estimate(cfg, hw, self.budget)
        except (ConfigError, OSError, ValueError) as error:
            log.info("memory budget: a point not judged (%s)", error)
            return None
        return self.budget.over_budget(estimate)


def point_estimate(cfg: DictConfig, hw, budget: MemoryBudget):
    """The memory estimate of a trial of config `cfg` on `hw`, against `budget` (its model's config.json alone)."""
    from ftharness.model.loading import read_model_config
    from ftharness.model.memory import estimate_memory, process_baseline

    return estimate_memory(cfg, hw, read_model_config(cfg), budget.bytes, process_baseline(hw.device))


def plan(overrides: List[str], budget_gb: float) -> List[Dict[str, str]]:
    """A row per point of the overrides' grid (`key=a,b,c`, `choice(...)`): the point, its estimate and whether
    a sweep with `memory_budget_gb=budget_gb` would run it."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ftharness.config.schema import CONF_DIR, register_schema
    from ftharness.config.validation import validate
    from ftharness.model.hardware import resolve_hardware

    register_schema()
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    budget, rows = MemoryBudget(budget_gb * GB, f"--budget-gb {budget_gb}"), []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for batch in BasicSweeper.split_arguments(parsed, None):
            for point in batch:
                cfg = compose(config_name="config", overrides=point)
                validate(cfg)
                estimate = point_estimate(cfg, resolve_hardware(cfg), budget)
                wont_fit = budget.over_budget(estimate)
                rows.append({"point": " ".join(o for o in point if o.split("=")[0] in swept) or "the config",
                             "estimate GB": f"{estimate.total / GB:.2f}",
                             "state": "fits" if wont_fit is None else Status.WONT_FIT,
                             "reason": "" if wont_fit is None else wont_fit.reason})
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Which points of a sweep fit a memory budget: the estimate that "
                                     "hydra.sweeper.memory_budget_gb applies, from the configs alone.")
    parser.add_argument("--budget-gb", type=float, required=True, help="GB one trial may take")
    parser.add_argument("overrides", nargs="*", help="config overrides; `key=a,b,c` or choice(...) sweep a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # the libraries' import-time notices
    from ftharness.ui.formatting import markdown_table

    print(markdown_table(plan(args.overrides, args.budget_gb)))


if __name__ == "__main__":
    main()
