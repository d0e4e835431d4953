"""ftharness: hyperparameter sweeps for LoRA / QLoRA fine-tuning (Hydra + Optuna + SwanLab).

One package per stage of a sweep, in the order a trial meets them:
- config/: the schema Hydra composes conf/ onto, the validation of every value, Hydra's override syntax;
- data/: sources, formats, splits, the synthetic tasks, chat templates, tokenization;
- model/: offline models, device and precision, the base loaded once, adapters, memory, merge;
- trial/: the recipe of one trial, the tasks, the Trainer, its callbacks, the loss, evaluation;
- sweep/: Optuna's samplers, pruners and storages, the search space, the sweeper's loop, pruning, devices;
- report/: the runs read back, the results table, seeds, findings, figures, the pages;
- ui/: the console, SwanLab tracking and its board, colours, the formatter of numbers.
contract.py is what passes between the processes of a sweep (summary.json, statuses, environment, study
attributes); lazy.py what is imported only when needed. The commands: `python -m ftharness` (__main__.py),
`python -m ftharness.report`, `.study`, `.merge`, `.compare`.
"""
