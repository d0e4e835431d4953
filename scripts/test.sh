#!/usr/bin/env bash
# The test suite: set up if needed, then every test, the slow end-to-end ones included (-m "not slow" skips
# them), on 2 pytest-xdist workers, each with its share of the cores (tests/conftest.py): most tests start the
# CLI, whose imports (torch, transformers, peft: ~10 s) leave a core idle. Extra arguments go to pytest (`-n 0`:
# one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
