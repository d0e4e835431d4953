#!/usr/bin/env bash
# The whole study: every comparison preset in sweeps/ one after the other, then docs/study.md from their
# reports. 91 minutes on 2 CPU cores. Extra arguments are Hydra overrides for every preset, e.g.
#   bash scripts/study.sh model=deepseek-llm-7b-chat data=emollm data.path=my_chats.json
# A finished comparison is not trained again (its grid study is complete): delete
# outputs/studies/<preset>-study.db to run it anew.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
presets=(lr rank alpha dropout target_modules epochs batch_size grad_accum)
sweep_dirs=()
for preset in "${presets[@]}"; do
  .venv/bin/python -m ftharness -m "sweep=$preset" "$@"
  name=$(.venv/bin/python -m ftharness "sweep=$preset" "$@" --cfg job --package _global_ | sed -n 's/^name: //p')
  sweep_dirs+=("$(ls -d "outputs/multirun/$name"/*/ | tail -n 1)")
done
.venv/bin/python -m ftharness.report --doc docs/study.md "${sweep_dirs[@]}"
