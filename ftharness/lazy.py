"""What is imported only when it is needed: the names each package's face hands on.

A package's `__init__` lists its public names (`__all__`) and loads the module that holds one on first use
(`exports`): the config's validation imports the data package's constants, and must not load torch,
transformers and peft on the way (a wrong key would take seconds to report, and bitsandbytes talks on stderr
when imported).
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
