"""ftharness's Optuna sweeper for Hydra (`hydra/sweeper=ftharness`, selected by the presets in `sweeps/`)."""
