"""A sweep of trials as an Optuna study: samplers, pruners and storages (optuna_objects), the search space (space), the
ask / launch / tell loop that the Hydra sweeper runs (loop), the trial's side of its study (pruning), points over
the memory budget told before launch (feasibility), one trial per device (devices), the best points confirmed with
other seeds (confirmation), the best trial (best), and the best point trained as one run (from_best)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "optuna_objects": ["SweepConfigError", "make_pruner", "make_sampler", "open_storage"],
    "space": ["SearchSpace"],
    "loop": ["StudySweep", "job_outcome"],
    "pruning": ["PruningCallback", "StudyRecorder", "trial_hooks"],
    "devices": ["DeviceError", "device_lease"],
    "feasibility": ["FeasibilityCheck", "MemoryBudget", "plan"],
    "confirmation": ["ConfirmedPoint", "confirmed_points", "planned_runs", "verdict"],
    "best": ["write_best"],
    "from_best": ["FromBestError", "from_best_arguments"],
})
