"""The config: the typed schema Hydra composes `conf/` onto (schema), and the checks of every value a user can
get wrong, before anything loads (validation)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "schema": ["Config", "SWEEPS_DIR", "register_schema"],
    "validation": ["ConfigError", "TASK_NAMES", "target_module_names", "validate"],
})
