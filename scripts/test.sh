#!/usr/bin/env bash
# The test suite: set up if needed, then every test, the slow end-to-end ones included (-m "not slow" skips
# them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
