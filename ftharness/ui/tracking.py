"""SwanLab tracking: one run per trial, named by its hyperparameters, coloured by its swept value.

transformers' `report_to="swanlab"` crashes with SwanLab 0.10 ("No active Run"), so the harness opens and
closes the run itself and the trainer callback forwards every logged step to `Tracker.log`.

What a user reads on the board: a short name (`lr=3.49e-4,r=8`), the colour of the swept value on the
report's colormap (ftharness/ui/colours.py; the sweep announces its values to the jobs through `SWEEP_ENV`),
the config as dotted keys (one sortable table column each), and an end state that says what happened.
SwanLab's local board knows three states only (Running, Finished, Crashed: `status` 0 / 1 / -1, and it
marks a run Crashed whenever `finish` gets an error). A pruned or diverged trial is a result, not a crash:
it finishes Finished, and its outcome goes into the run's description and config (`result.state`,
`result.reason`); only a trial that failed with an error finishes Crashed.
"""

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from ftharness.config.overrides import command_line_sweeps, job_params, override_text, param_sweeps
from ftharness.contract import SWEEP_ENV, SWEPT_KEYS_ENV, Status
from ftharness.lazy import swanlab, swanlab_experiments
from ftharness.ui.formatting import format_value

log = logging.getLogger(__name__)

SWANLAB_MODES = {"local": "local", "offline": "offline", "cloud": "online", "disabled": "disabled"}
NAMED_PREFIXES = ("optim", "lora", "train", "seed")  # the hyperparameters that name a single run
UNNAMED = re.compile(r"path|dir|file|device|save_adapter|logging_steps")  # settings, not hyperparameters
UNCHARTED = {"train/epoch", "train/tokens_seen"}  # step bookkeeping: in metrics.jsonl, not among the charts
FINISHED = {Status.COMPLETED, Status.PRUNED, Status.DIVERGED}  # outcomes of training, not crashes: "success"


def short_key(key: str) -> str:
    """`optim.lr` -> `lr`, `lora.r` -> `r`: run names stay readable in the dashboard's legend."""
    return key.rsplit(".", 1)[-1]


def _named(key: str) -> bool:
    return key.split(".")[0] in NAMED_PREFIXES and not UNNAMED.search(key)


def announced_keys() -> List[str]:
    """The swept keys the sweep announced to its jobs (SWEPT_KEYS_ENV); [] for a single run."""
    return [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k]


def run_name(overrides: Iterable[str]) -> str:
    """`lr=3.49e-4,r=8` from the job's overrides: a sweep's swept keys (announced in SWEPT_KEYS_ENV), or for
    a single run the hyperparameters set on the command line; never paths, data or tracker settings."""
    swept = announced_keys()
    parts = [f"{short_key(key)}={format_value(value)}" for key, value in job_params(overrides).items()
             if ((key in swept) if swept else _named(key))]
    return ",".join(parts) or "default"


def flat_config(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """`{"optim": {"lr": 1e-3}}` -> `{"optim.lr": 1e-3}`: one sortable column per key in SwanLab's table."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def board_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config as the board's table shows it, one column per dotted key (the local board sorts them by
    name; SwanLab's `sort` order puts the swept keys first, then the outcome filled in by `Tracker.finish`).
    `name` is left out: the board's own name column would show it in place of the run's name (it is the
    project's name anyway)."""
    flat = flat_config(config)
    flat.pop("name", None)
    swept = [k for k in announced_keys() if k in flat]
    return {**{k: flat[k] for k in swept}, "result.state": str(Status.RUNNING), "result.reason": "", **flat}


def sweep_colour(cfg: DictConfig, announced: dict) -> Optional[str]:
    """This job's colour on the sweep's scale, from its own value of the scale's key (None outside a sweep)."""
    from ftharness.ui.colours import Scale

    if not announced.get("scale"):
        return None
    scale = Scale(**announced["scale"])
    value = OmegaConf.select(cfg, scale.key)
    try:
        return scale.colour(override_text(value) if scale.choices else value)
    except (TypeError, ValueError):  # a value the scale cannot place: SwanLab picks a colour
        return None


def sweep_announcement(config: DictConfig, keys: List[str]) -> dict:
    """What a sweep tells its jobs through SWEEP_ENV: its SwanLab group (the study's name, or the sweep
    folder) and the colour scale of its first swept key, from the sweep's own values (command-line sweeps
    such as `lora.r=8,16,64`, and `hydra.sweeper.params` such as `tag(log, interval(1e-5, 5e-2))`)."""
    from ftharness.ui.colours import sweep_scale

    sweeps = {**param_sweeps(config), **command_line_sweeps(config)}
    scales = (sweep_scale(key, sweeps[key]) for key in keys if key in sweeps)
    scale = next((s for s in scales if s is not None), None)
    study = OmegaConf.select(config, "hydra.sweeper.study_name")
    group = study or f"{config.name}/{os.path.basename(str(config.hydra.sweep.dir))}"
    return {"group": group, "scale": scale.as_dict() if scale else None}


def announced_sweep() -> dict:
    """What the sweep told its jobs (SWEEP_ENV): {"group": ..., "scale": {...}}; {} for a single run."""
    try:
        return json.loads(os.environ.get(SWEEP_ENV) or "{}")
    except json.JSONDecodeError:
        return {}


class Tracker:
    """A SwanLab run for one trial (a no-op when `tracker.mode=disabled`: SwanLab is not even imported)."""

    def __init__(self, cfg: DictConfig, name: str, config: dict, extra_tags: Optional[List[str]] = None):
        self.enabled = cfg.tracker.mode != "disabled"
        self.mode = SWANLAB_MODES[cfg.tracker.mode]
        if not self.enabled:
            return
        self._swanlab = swanlab()
        os.makedirs(cfg.tracker.log_dir, exist_ok=True)
        sweep = announced_sweep()
        self.run = self._swanlab.init(project=cfg.tracker.project, name=name, config=board_config(config),
                                mode=self.mode, log_dir=cfg.tracker.log_dir, color=sweep_colour(cfg, sweep),
                                group=sweep.get("group"),
                                tags=list(cfg.tracker.tags) + list(extra_tags or []), reinit=True)

    def log(self, metrics: Dict[str, float], step: int) -> None:
        if self.enabled:
            self._swanlab.log({k: v for k, v in metrics.items() if v is not None and k not in UNCHARTED}, step=step)

    def finish(self, status: Status = Status.COMPLETED, reason: Optional[str] = None) -> None:
        """Close the run with the trial's `status` (completed | pruned | diverged | failed | interrupted) and
        `reason`: failed and interrupted runs finish as crashed (they did not end), the others as finished;
        the outcome goes into description and config."""
        if not self.enabled:
            return
        status = str(status)  # the word, as SwanLab stores it
        description = reason if reason and reason.startswith(status) else ": ".join(filter(None, [status, reason]))
        self.run.config.update({"result.state": status, "result.reason": reason or ""})
        if status in FINISHED:
            self._swanlab.finish(state="success")
        else:  # failed, or a state this module does not know
            self._swanlab.finish(state="crashed", error=reason or status)
        if self.mode == "local":
            self._describe_local_run(description)
        self.enabled = False

    def _describe_local_run(self, description: str) -> None:
        """The local board shows the description set at `init`: replace it with the outcome, known only now."""
        try:
            Experiment = swanlab_experiments()
            Experiment.update(description=description[:255]).where(
                Experiment.run_id == Path(self.run.dir).name).execute()
        except Exception as error:  # noqa: BLE001 -- the curves are saved; only the description is missing
            log.warning("SwanLab local run description not updated: %s", error)
