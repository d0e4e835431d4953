"""ftharness: hyperparameter sweeps for LoRA / QLoRA fine-tuning (Hydra + Optuna + SwanLab)."""

import logging

# bitsandbytes warns at import, on CPUs with AVX512_BF16, that the optional `kernels` package (its 4-bit CPU
# kernels, fetched from the Hub) is missing; its own fallback runs. With no handler Python's last resort would
# print that on the plain CLIs (merge, compare, report); the Hydra CLI's handlers still log it to the job's file.
logging.getLogger("bitsandbytes").addHandler(logging.NullHandler())
