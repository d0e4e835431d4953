#!/usr/bin/env bash
# The main job: set up if needed, then the default Optuna study (learning rate, rank, target modules; pruned)
# on the embedded model and data, ending with its results table and report (report.html in the sweep folder).
# Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m ftharness -m sweep=default "$@"
