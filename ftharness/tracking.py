"""SwanLab tracking: one run per trial, named by the values that differ from the defaults.

transformers' `report_to="swanlab"` crashes with SwanLab 0.10 ("No active Run"), so the harness opens and
closes the run itself and the trainer callback forwards every logged step to `Tracker.log`.
"""

import logging
import os
from typing import Dict, Iterable, List, Optional

from omegaconf import DictConfig

log = logging.getLogger(__name__)

SWANLAB_MODES = {"local": "local", "offline": "offline", "cloud": "online", "disabled": "disabled"}
# Set by the sweep callback (reporting.SweepSummary) for the jobs of any sweep: the swept keys, comma-separated.
SWEPT_KEYS_ENV = "FTHARNESS_SWEPT_KEYS"


def short_key(key: str) -> str:
    """`optim.lr` -> `lr`, `lora.r` -> `r`: run names stay readable in the dashboard's legend."""
    return key.lstrip("+~").rsplit(".", 1)[-1]


def run_name(overrides: Iterable[str]) -> str:
    """`lr=2e-4,r=16` from the job's overrides, keeping only the swept keys when a sweep announced them."""
    swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k]
    parts = []
    for override in overrides:
        key, _, value = override.partition("=")
        if not swept or key.lstrip("+~") in swept:
            parts.append(f"{short_key(key)}={value}")
    return ",".join(parts) or "default"


class Tracker:
    """A SwanLab run for one trial (a no-op when `tracker.mode=disabled`)."""

    def __init__(self, cfg: DictConfig, name: str, config: dict, extra_tags: Optional[List[str]] = None):
        import swanlab

        self._swanlab = swanlab
        self.enabled = cfg.tracker.mode != "disabled"
        if not self.enabled:
            return
        os.makedirs(cfg.tracker.log_dir, exist_ok=True)
        self.run = swanlab.init(project=cfg.tracker.project, name=name, config=config,
                                mode=SWANLAB_MODES[cfg.tracker.mode], log_dir=cfg.tracker.log_dir,
                                tags=list(cfg.tracker.tags) + list(extra_tags or []), reinit=True)

    def log(self, metrics: Dict[str, float], step: int) -> None:
        if self.enabled:
            self._swanlab.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def finish(self, state: str = "success", error: Optional[str] = None) -> None:
        """Close the run; `state` is "success", "crashed" (failed, with `error`) or "aborted" (pruned)."""
        if self.enabled:
            self._swanlab.finish(state=state, error=error)
            self.enabled = False
