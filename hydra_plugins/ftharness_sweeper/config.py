"""The sweeper's config schema, registered as `hydra/sweeper=ftharness`.

No `from __future__ import annotations` here: Hydra's plugin scan and OmegaConf need real type objects.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | grid | gp | cmaes | nsga2 | qmc: Optuna's samplers of those names
    seed: Optional[int] = None  # base seed; each ask adds the study's trial count, so a resume draws new points
    options: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Optuna sampler
    # In place of `name`: any sampler class by its dotted path (Optuna's or your own), made through Hydra's instantiate
    # with `options` as its keyword arguments and, when set, `seed`
    _target_: Optional[str] = None


@dataclass
class PrunerConf:
    name: str = "median"  # median | percentile | successive_halving | hyperband | none
    options: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Optuna pruner
    # In place of `name`: any pruner class by its dotted path, made through Hydra's instantiate with `options`
    _target_: Optional[str] = None
    # What a trial reports: eval_loss (each periodic evaluation, train.eval_steps) | train_loss (every report_steps
    # steps, the mean loss of their batches before each update: held-out rows at no cost during the first epoch)
    evidence: str = "eval_loss"
    report_steps: int = 4  # train_loss: optimizer steps per report
    # No pruning before this share of each trial's optimizer steps (below 1; the job converts it once its Trainer
    # knows them, from max_steps or epochs) or this many steps (1 or more): median / percentile `n_warmup_steps`,
    # successive_halving / hyperband `min_resource`. null: the pruner's options decide.
    warmup: Optional[float] = None


@dataclass
class ConfirmConf:
    # After the study's trials, its best top_k distinct points (completed trials, by objective) run again with
    # `seeds` other seeds each (seed+1, ...), same budget, no pruning: the verdict says whether the best point
    # beats the runner-up beyond seed noise, and best.json names the point with the best mean. 0: off.
    top_k: int = 0
    seeds: int = 3  # other seeds per confirmed point
    # Optimizer steps of the confirmation runs (train.max_steps), e.g. the run you will train: the points then run
    # with `seeds` seeds from the study's own, and the verdict says whether the study's order held. null: the study's
    budget: Optional[int] = None


@dataclass
class FtharnessSweeperConf:
    _target_: str = "hydra_plugins.ftharness_sweeper.ftharness_sweeper.FtharnessSweeper"
    # the Optuna study, by default the config's `name` or else the job's name (any Hydra app); re-running the same
    # command resumes it
    study_name: str = "${oc.select:name,${hydra.job.name}}"
    storage: Optional[str] = None  # RDB URL or journal:<file>; null: sqlite under outputs/studies/<study>.db
    # summary metric(s) to optimize, or the names of the task function's returned values (a dict's keys); a list
    # makes a multi-objective study. null (an app without `objective`): one per direction, `objective(_<i>)`
    metric: Any = "${oc.select:objective.metric,null}"
    direction: Any = "${oc.select:objective.direction,minimize}"  # minimize | maximize, or one per metric
    n_trials: int = 20  # the study's total: a resumed study runs only the trials still missing
    seeds: int = 1  # grid studies: each grid point runs with seeds seed, seed+1, ... (the grid covers value x seed)
    n_jobs: int = 1  # trials asked and launched per batch (run at once by a parallel launcher, e.g. joblib)
    # GPUs one trial takes from this machine's pool (the sweep's CUDA_VISIBLE_DEVICES, else every GPU): each
    # parallel job is pinned to free ones through CUDA_VISIBLE_DEVICES and waits while all are taken; 0: no
    # pinning. Cluster launchers (SLURM) leave it to the scheduler. n_jobs parallel workers share the CPU cores.
    devices_per_trial: int = 1
    max_failure_rate: float = 0.5  # stop the sweep once failed trials exceed this share of n_trials (0 .. 1)
    # GB one trial may take: an asked point whose memory estimate (from its config alone, no model loaded) is over
    # it is told at once as `wont_fit`, never run, not counted in n_trials, and the sampler learns to avoid its
    # region. auto: the device's (one GPU's memory, or the RAM available at the start shared by n_jobs); null: off
    memory_budget_gb: Any = "auto"
    heartbeat_interval: int = 30  # seconds between heartbeats of running trials (RDB storages)
    grace_period: int = 90  # a running trial without a heartbeat this long (> heartbeat_interval) is failed, retried
    max_retry: int = 2  # times the params of a trial whose process died are retried
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # The search space: config key -> Hydra sweep syntax: choice(a,b), range(1,5), interval(1e-5,1e-1),
    # tag(log, interval(...)). A key `a/b` samples the ratio of a to b (e.g. lora.alpha/lora.r: choice(1,2)).
    params: Dict[str, str] = field(default_factory=dict)
    # `module.function`, called as function(cfg, trial) with the sweep's config and each asked Optuna trial: it
    # suggests further parameters from the sampled ones (one bounded by another's value), as hydra-optuna-sweeper's
    # does; each sets the config key it is named after (`+key` adds one the config has not)
    custom_search_space: Optional[str] = None


@dataclass
class FtharnessSweeperNode(FtharnessSweeperConf):
    """`hydra/sweeper=ftharness` as Hydra composes and instantiates it: the schema above, plus the keys that Hydra
    reads and removes before the sweeper sees them."""

    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])  # hydra/sweeper/sampler=...
    _recursive_: bool = False  # the sampler's and pruner's `_target_` are made per ask and per trial, not once here


ConfigStore.instance().store(group="hydra/sweeper", name="ftharness", node=FtharnessSweeperNode, provider="ftharness")
# `hydra/sweeper/sampler=random` as with hydra-optuna-sweeper: each option sets the name alone, so that a preset's
# seed and options stay (`nsgaii` is that sweeper's name of nsga2)
SAMPLER_OPTIONS = {**{name: name for name in ("tpe", "random", "grid", "gp", "cmaes", "nsga2", "qmc")},
                   "nsgaii": "nsga2"}
for option, name in SAMPLER_OPTIONS.items():
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=option, node={"name": name}, provider="ftharness")
