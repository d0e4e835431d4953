"""Hydra's override syntax, read and written in one place: the sweeps that a command line and the sweeper's
`params` declare, a job's own `key=value` overrides, and values written back as override text.

A sweep is declared in two places: on the command line (`lora.r=8,16,64`: Hydra's basic sweeper runs every
combination, the ftharness sweeper makes them a search space) and in `hydra.sweeper.params`
(`optim.lr: tag(log, interval(1e-5, 1e-1))`). Its keys name the runs (ui/tracking.py), its values give the
colour scale (ui/colours.py) and the Optuna search space (sweep/space.py); a job's overrides name its run and
fill its summary's `params`.
"""

from typing import Any, Dict, Iterable, List, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf

from ftharness.contract import SEED_KEY

RATIO = "/"  # a `params` key `a/b`: the sweeper samples the ratio a/b and sets a = ratio * b


def config_key(key: str) -> str:
    """`+train.x` / `~train.x` -> `train.x`: the config key an override sets, without its add / delete mark."""
    return key.lstrip("+~")


def override_text(value: Any) -> str:
    """A value written in override syntax (Hydra's own inverse of its parser): lists stay lists, strings with
    commas, brackets or spaces are escaped, so every value survives the round trip (`[q_proj,v_proj]`,
    `all-linear`, `0.001`)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return Override._get_value_element_as_str(value)


def job_params(overrides: Iterable[str]) -> Dict[str, str]:
    """A job's overrides as `{config key: value as typed}`: the runs' names and their summaries' `params`."""
    return {config_key(key): value for key, _, value in (o.partition("=") for o in overrides)}


def parse_sweep(text: str) -> Any:
    """One sweep as `hydra.sweeper.params` writes it (`choice(8,16)`, `tag(log, interval(1e-5, 1e-1))`), parsed."""
    return OverridesParser.create().parse_override(f"key={text}").value()


def task_overrides(config: DictConfig) -> List[Override]:
    """The command line's overrides (`hydra.overrides.task`), parsed."""
    return OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))


def command_line_sweeps(config: DictConfig) -> Dict[str, Any]:
    """The command line's sweeps by config key, parsed (`lora.r=8,16` -> a ChoiceSweep)."""
    return {config_key(o.get_key_element()): o.value() for o in task_overrides(config) if o.is_sweep_override()}


def searched_params(params: Mapping[str, Any], fixed: Iterable[str]) -> Dict[str, Any]:
    """`hydra.sweeper.params` less the keys that the command line fixes to one value: the command line wins
    (`-m sweep=default lora.r=4` trains r=4 only). A ratio `a/b` leaves with a fixed `a`; with a fixed `b` it
    stays and multiplies that value."""
    fixed = set(fixed)
    return {key: value for key, value in params.items() if key.split(RATIO)[0] not in fixed}


def _searched_params(config: DictConfig) -> Dict[str, str]:
    """The sweeper's `params` of a sweep's config, less the keys its command line fixes."""
    fixed = [config_key(o.get_key_element()) for o in task_overrides(config) if not o.is_sweep_override()]
    return searched_params(OmegaConf.select(config, "hydra.sweeper.params") or {}, fixed)


def param_sweeps(config: DictConfig) -> Dict[str, Any]:
    """`hydra.sweeper.params` that the command line leaves searched, parsed; a key `a/b` (a ratio) stays as it is."""
    return {key: parse_sweep(text) for key, text in _searched_params(config).items()}


def swept_keys(config: DictConfig) -> List[str]:
    """Keys swept by the command line (`lora.r=8,16`) or by `hydra.sweeper.params` (less those the command line
    fixes), in that order, and the seed when the sweeper repeats each point with several (`hydra.sweeper.seeds`)."""
    params = [key.split(RATIO)[0] for key in _searched_params(config)]
    seeds = [SEED_KEY] if (OmegaConf.select(config, "hydra.sweeper.seeds") or 1) > 1 else []
    return list(dict.fromkeys([*command_line_sweeps(config), *params, *seeds]))

