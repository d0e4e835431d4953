"""What a sweep found: its runs read back (runs), the one results table (results), runs of one value with
several seeds (seeds), the study's findings checked (findings), the figures (figures, by_key), a study's own trials
and their importances (importances), the report page (sweep_report), the study write-up (study_doc), the end of a
sweep (end_of_sweep), and the base's and the runs' answers side by side (answers)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "runs": ["Run", "load_runs", "study_runs"],
    "results": ["Results", "results_of", "sweep_results", "write_table"],
    "seeds": ["ValueGroup", "group_by_value"],
    "findings": ["FINDINGS", "verdict"],
    "figures": ["by_value_figure", "curves_figure"],
    "by_key": ["by_key_figure", "by_key_info"],
    "importances": ["key_importances", "own_study"],
    "sweep_report": ["Report", "build", "write_report"],
    "study_doc": ["write_study_doc"],
    "end_of_sweep": ["SweepSummary", "end_of_app_sweep"],
    "answers": ["expand_runs", "generate_columns"],
})
