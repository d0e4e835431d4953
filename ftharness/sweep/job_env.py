"""The environment a sweep gives each job: the study and trial it runs for, its label, the swept keys that name it,
its share of the devices (the variables are named in ftharness/contract.py). Hydra sets it around the task function
from the job's `hydra.job.env_set`, so it travels with the job to any launcher (joblib, submitit).

Hydra's launchers log each job's overrides, leaving out those that start with `hydra.`. An override adding a key
(`+hydra.job.env_set.K=v`) is not left out: a plain Hydra app's console showed four or more of them on every job's line.
So the sweep adds its keys once, to its own Hydra overrides (`declare_job_env`), from which every job's config is
composed (Hydra's `load_sweep_config`); a job's overrides only change their values (`job_env_overrides`).
"""

from typing import Dict, List

from omegaconf import DictConfig, read_write

from ftharness.config.overrides import override_text

ENV_SET = "hydra.job.env_set"

__all__ = ["declare_job_env", "job_env_overrides"]


def declare_job_env(config: DictConfig, env: Dict[str, str]) -> None:
    """Add `env`'s keys, with its values, to the sweep's Hydra overrides (`++`: a key the app's config sets, or an
    earlier call added, is set again, not refused)."""
    hydra_overrides = config.hydra.overrides.hydra
    with read_write(hydra_overrides):
        hydra_overrides.extend([f"++{ENV_SET}.{key}={override_text(value)}" for key, value in env.items()])


def job_env_overrides(env: Dict[str, str]) -> List[str]:
    """One job's values of keys `declare_job_env` added: overrides Hydra leaves out of its `Launching` lines."""
    return [f"{ENV_SET}.{key}={override_text(value)}" for key, value in env.items()]
