"""A sweep of trials as an Optuna study: samplers, pruners and storages (optuna_objects), the search space (space), the
sweeper's settings checked (budget), the settings a study answers for (settings), the ask / launch / tell loop that
the Hydra sweeper runs (loop) with what it asks (asking), what it tells (telling), what becomes of dead and
interrupted trials (heartbeats), which job folders are its own (job_folders), the environment it gives each job
(job_env), the trial's side of its study (pruning; `trial.report` for any Hydra app), points over the memory budget
told before launch (feasibility), one trial per device (devices), the best points confirmed with other seeds
(confirmation), the best trial (best), and the best point trained as one run (from_best)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "optuna_objects": ["SweepConfigError", "make_pruner", "make_sampler", "open_storage"],
    "space": ["SearchSpace"],
    "budget": ["Budget", "StudyTarget", "check_keys_it_sets", "check_sweep_settings"],
    "settings": ["StudySettings", "check_settings"],
    "loop": ["StudySweep"],
    "asking": ["current_trials", "trained_twin"],
    "telling": ["job_outcome", "summary_outcome"],
    "heartbeats": ["Heartbeats", "StaleTrials"],
    "job_env": ["declare_job_env", "job_env_overrides"],
    "pruning": ["PruningCallback", "StudyRecorder", "trial_hooks"],
    "devices": ["DeviceError", "device_env", "device_lease"],
    "feasibility": ["FeasibilityCheck", "MemoryBudget", "plan"],
    "confirmation": ["ConfirmedPoint", "confirmed_points", "planned_runs", "verdict"],
    "best": ["best_line", "write_best"],
    "from_best": ["FromBestError", "from_best_arguments"],
})
