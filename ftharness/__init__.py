"""ftharness: hyperparameter sweeps for LoRA / QLoRA fine-tuning (Hydra + Optuna + SwanLab)."""
