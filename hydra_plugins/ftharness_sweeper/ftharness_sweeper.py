"""The Hydra side of the sweeper: Hydra instantiates this class; the Optuna work lives in ftharness/sweep/loop.py
(imported only when a sweep starts, so that Hydra's plugin scan stays fast for single runs)."""

from pathlib import Path
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import FtharnessSweeperConf  # noqa: F401 -- importing it registers hydra/sweeper=ftharness


class FtharnessSweeper(Sweeper):
    """An Optuna study as a Hydra sweep: ask a batch of trials, launch them as jobs, tell their results."""

    def __init__(self, **conf: Any) -> None:
        self.conf = conf  # checked in setup: a refusal raised here met the user wrapped in Hydra's instantiate error
        self.study_sweep = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from ftharness.sweep.loop import StudySweep
        from ftharness.sweep.optuna_objects import refusals_in_one_line

        with refusals_in_one_line():
            self.study_sweep = StudySweep.from_config(**self.conf)
            self.study_sweep.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from ftharness.report.end_of_sweep import SweepSummary, end_of_app_sweep, end_of_sweep
        from ftharness.sweep.loop import TooManyFailures
        from ftharness.sweep.optuna_objects import refusals_in_one_line

        config = self.study_sweep.config
        own = _has_callback(config, SweepSummary)  # ftharness's own config: the callback writes the results at the end
        with refusals_in_one_line():
            try:
                returns = self.study_sweep.sweep(arguments)
            except TooManyFailures:  # the results so far, as at a sweep's end, then the one line that says why
                if own:
                    end_of_sweep(Path(config.hydra.sweep.dir))
                raise
        if not own:
            end_of_app_sweep(Path(config.hydra.sweep.dir))
        return returns


def _has_callback(config: DictConfig, callback: type) -> bool:
    """Whether the config's `hydra.callbacks` include `callback`, which then writes the results at a sweep's end."""
    name = f"{callback.__module__}.{callback.__qualname__}"
    return any(spec.get("_target_") == name for spec in (config.hydra.get("callbacks") or {}).values())
