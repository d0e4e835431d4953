"""`python -m ftharness [overrides]`: one trial; `python -m ftharness -m ...`: a sweep of them;
`python -m ftharness from_best=<sweep dir | best.json | storage URL> [overrides]`: a study's best point as one
trial (ftharness/sweep/from_best.py rewrites the command line before Hydra reads it), or, with no overrides, its
adapter handed over.

The task function validates the config before anything loads and turns every failure into a record: a
single run exits non-zero with one clear line; a job of a sweep writes a failed `summary.json` with the
reason and returns NaN, so the other jobs go on. Ctrl-C writes an `interrupted` summary.json and stops
everything; the sweeper records the trial as interrupted (ftharness/sweep/loop.py), and the command exits 130.
"""

import json
import logging
import math
import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ftharness.config.overrides import job_params
from ftharness.config.schema import register_schema
from ftharness.config.validation import ConfigError, validate
from ftharness.contract import FROM_BEST_ENV, Status, TrialSummary
from ftharness.data.sources import DataError
from ftharness.sweep.devices import DeviceError, device_lease
from ftharness.sweep.from_best import FromBestError, from_best_arguments
from ftharness.ui.console import route_library_output
from ftharness.ui.tracking import run_name

log = logging.getLogger("ftharness")


def _record_failure(run_dir: Path, name: str, params: dict, error: BaseException,
                    status: Status = Status.FAILED) -> None:
    error_line = f"{type(error).__name__}: {error}".strip().rstrip(":")
    TrialSummary(status, run_name=name, params=params, error=error_line).write(run_dir)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    name, params = run_name(hydra_cfg.overrides.task), job_params(hydra_cfg.overrides.task)
    from_best = json.loads(os.environ[FROM_BEST_ENV]) if FROM_BEST_ENV in os.environ and not in_sweep else None
    if from_best:
        name = f"best of {from_best['study']}"
    try:
        validate(cfg)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        with device_lease():  # in a sweep: its own GPU(s) of the pool, or its share of the CPU cores
            route_library_output()  # heavy imports only once the config is known to be valid
            from ftharness.sweep.pruning import trial_hooks
            from ftharness.trial.recipe import run_trial

            callbacks, tags = trial_hooks(hydra_cfg)  # pruning, curves into the study (Optuna sweeper's jobs)
            summary = run_trial(cfg, run_dir, name, params, callbacks, tags)
            if from_best:
                summary.from_best = from_best
                summary.write(run_dir)
            return summary.objective_value
    except (ConfigError, DataError, DeviceError) as error:
        if not in_sweep:  # nothing ran: leave no run directory that could pass for a result
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"ftharness: error: {error}", file=sys.stderr)
            sys.exit(2)
        log.error("invalid input: %s", error)
        _record_failure(run_dir, name, params, error)
    except KeyboardInterrupt as error:  # Ctrl-C: record it, then stop the whole command
        _record_failure(run_dir, name, params, error, status=Status.INTERRUPTED)
        raise
    except Exception as error:  # noqa: BLE001 -- a crashed trial: keep its record and, in a sweep, go on
        log.error("trial failed: %s\n%s", error, traceback.format_exc(), extra={"console": False})
        _record_failure(run_dir, name, params, error)
        if not in_sweep:
            print(f"ftharness: trial failed: {type(error).__name__}: {error} (details in {run_dir})", file=sys.stderr)
            sys.exit(1)
    return math.nan


if __name__ == "__main__":
    register_schema()  # conf/config.yaml's first default, and the sweep presets as its `sweep` group
    try:
        sys.argv[1:], handed_over = from_best_arguments(sys.argv[1:])
    except FromBestError as error:
        print(f"ftharness: error: {error}", file=sys.stderr)
        sys.exit(2)
    if handed_over:
        print(handed_over)
        sys.exit(0)
    try:
        main()
    except KeyboardInterrupt:
        print("ftharness: interrupted", file=sys.stderr)
        sys.exit(130)
