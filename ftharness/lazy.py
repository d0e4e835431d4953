"""What is imported only when it is needed: the names each package's face hands on, and the heavy libraries
that one feature alone uses.

A package's `__init__` lists its public names (`__all__`) and loads the module that holds one on first use
(`exports`): the config's validation imports the data package's constants, and must not load torch,
transformers and peft on the way (a wrong key would take seconds to report, and bitsandbytes talks on stderr
when imported). The libraries below serve one feature each, so importing them with the module that uses them
would cost every command their import time:
- `swanlab()`, `swanlab_experiments()`: the tracker (`tracker.mode` other than disabled) and its local board's
  database, where a run's outcome goes into its description;
- `orpo()`: TRL's ORPO trainer (`task=orpo`);
- `optuna_dashboard_server()`: `python -m ftharness.study --dashboard`;
- `optuna_plots()`: Optuna's matplotlib plots in a study's report, drawn by pyplot on the Agg backend (files
  only, no display); the harness's own figures draw without pyplot (ftharness/report/figures.py).
"""

import importlib
from typing import Any, Callable, Dict, List, Tuple


def exports(package: str, homes: Dict[str, List[str]]) -> Tuple[Callable[[str], Any], List[str]]:
    """(`__getattr__`, `__all__`) for a package whose public names live in its modules: `homes` maps each
    module (by its name in the package) to the names it gives; a name's module is imported when the name is
    first asked for. A name is never a module's: `ftharness.report.end_of_sweep` must stay the module (Hydra's
    callback path), not a function of that name."""
    home_of = {name: module for module, names in homes.items() for name in names}
    if set(home_of) & set(homes):
        raise ValueError(f"{package}: {sorted(set(home_of) & set(homes))} name both a module and an export")

    def __getattr__(name: str) -> Any:
        if name not in home_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home_of[name]}"), name)

    return __getattr__, list(home_of)


def swanlab():
    import swanlab

    return swanlab


def swanlab_experiments():
    """The local board's table of runs (swanboard's peewee model)."""
    from swanboard.db.models import Experiment

    return Experiment


def orpo() -> Tuple[type, type]:
    """(ORPOConfig, ORPOTrainer): ORPO lives in TRL's experimental package since TRL 1.0."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def optuna_dashboard_server() -> Callable:
    from optuna_dashboard import run_server

    return run_server


def optuna_plots():
    """(pyplot, optuna.visualization.matplotlib), pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    from optuna.visualization import matplotlib as plots

    return pyplot, plots
