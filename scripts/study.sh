#!/usr/bin/env bash
# The whole study: every comparison preset in sweeps/ one after the other, each value with 3 seeds
# (hydra.sweeper.seeds in sweeps/compare.yaml), then docs/study.md from their reports: every verdict with its
# seeds' spread, and the study's run time (the sum of the sweeps' wall times).
# Wall time on 2 CPU cores, 3 seeds, on an Intel Xeon with AMX (bf16 autocast on a bf16 base, ~50 s a 30-step
# trial): lr 14.4, rank 11.5, alpha 4.9, dropout 7.0, target modules 7.8, epochs 7.9, batch size 7.7, grad_accum
# 11.6 min: 73 min in all. In fp32 on an AMD EPYC with AVX2 only, three to four times as long (rank 45.5 min,
# grad_accum 31.1).
# Extra arguments are Hydra overrides for every preset, e.g.
#   bash scripts/study.sh hydra.sweeper.seeds=1          one seed per value, as in the 91-minute run
#   bash scripts/study.sh model=deepseek-llm-7b-chat data=emollm data.path=my_chats.json
# STUDY_PRESETS picks comparisons and updates only their sections of docs/study.md (the others stay as they are):
#   STUDY_PRESETS="alpha dropout" bash scripts/study.sh
# A finished comparison is not trained again (its grid study is complete): delete
# outputs/studies/<preset>-study.db to run it anew. A study of another grid (e.g. one seed, before seeds) is
# not resumed: the sweep stops and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
read -r -a presets <<< "${STUDY_PRESETS:-lr rank alpha dropout target_modules epochs batch_size grad_accum rank_lr}"
update=()
if [ -n "${STUDY_PRESETS:-}" ]; then update=(--update); fi
sweep_dirs=()
for preset in "${presets[@]}"; do
  .venv/bin/python -m ftharness -m "sweep=$preset" "$@"
  name=$(.venv/bin/python -m ftharness "sweep=$preset" "$@" --cfg job --package _global_ | sed -n 's/^name: //p')
  sweep_dirs+=("$(ls -d "outputs/multirun/$name"/*/ | tail -n 1)")
done
.venv/bin/python -m ftharness.report --doc docs/study.md "${update[@]}" "${sweep_dirs[@]}"
