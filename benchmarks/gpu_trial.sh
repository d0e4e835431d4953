#!/usr/bin/env bash
# The trial benchmark (benchmarks/trial_speed.py) on a GPU machine without network access, on a model of a 7B
# shape with random weights (right for speed and memory, not for learning) and SmolLM2's tokenizer: the
# tutorial's pipeline in fp32 against the harness's trial in bf16, on the default study's trial.
#
#   bash benchmarks/gpu_trial.sh prepare     # here, after scripts/setup.sh: into .whl/ the wheels (Python 3.12) of
#                                            # the packages such a machine's PyTorch image lacks, into .gpu/ the tokenizer
#   bash benchmarks/gpu_trial.sh run [SHAPE] [trial_speed.py's options and overrides]
#                                            # there, with .whl/ and .gpu/ carried along: SHAPE deepseek-llm-7b by default
#   bash benchmarks/gpu_trial.sh profile [gpu_profile.py's options and overrides]
#                                            # there too: per variant of the study's trial (compiled, prefix
#                                            # sharing, micro-batch x accumulation, checkpointing, peft's LoRA
#                                            # forward) timed steps and the profiler's launches, syncs, device busy
#                                            # share, top kernels (benchmarks/gpu_profile.py; the 7B shape built on
#                                            # the GPU; its table into $OUT after each variant; not yet run on one:
#                                            # its --quick mode runs in the suite on the CPU)
#   bash benchmarks/gpu_trial.sh big [big_model.py's options and overrides]
#                                            # there too: the 7B preset as it is (4-bit, paged 8-bit AdamW), through
#                                            # the CLI (benchmarks/big_model.py)
#
# The tables also go to $OUT/gpu_trial.txt, $OUT/gpu_profile.txt and $OUT/big_model.txt when OUT is set. A machine with network access and the harness set up
# needs none of this: `python benchmarks/trial_speed.py --random-model deepseek-llm-7b` (or a real model:
# `model.name_or_path=...`).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the harness's trial and CLI import beyond such an image (torch, transformers 5.17, accelerate, pandas,
# pyarrow, tokenizers, safetensors, huggingface_hub there), and the pinned transformers, peft and bitsandbytes
# (pyproject.toml), and SQLAlchemy, Alembic and Mako for a study's SQLite storage (`big --study`).
WHEELS=(transformers==5.23.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hydra-core==1.3.8
        omegaconf==2.3.1 optuna==5.0.0 colorlog==6.12.0 bitsandbytes==0.50.2 sqlalchemy==2.1.9 alembic==1.20.1
        mako==1.4.3)
ANTLR=antlr4-python3-runtime==4.9.3  # hydra-core's parser runtime: a source package only, built into a wheel here

# bitsandbytes' wheel holds a library per CUDA version (129 MB unpacked, 43 MB packed: the carried tree's limit is
# 64 MiB); the machine's torch is built for CUDA 13, so only the CUDA 13 libraries (4 MB each) stay.
trim_bitsandbytes() {
  .venv/bin/python - <<'EOF'
import pathlib, re, zipfile
wheel = next(pathlib.Path(".whl").glob("bitsandbytes-*.whl"))
trimmed = wheel.with_suffix(".trimmed")
keep = lambda name: not re.search(r"libbitsandbytes_cuda(?!13)\d+\.so$", name)
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
    for item in filter(lambda item: keep(item.filename), source.infolist()):
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # the wheel's list of its files, less those left out
            data = "".join(f"{line}\n" for line in data.decode().splitlines() if keep(line.split(",")[0])).encode()
        target.writestr(item, data)
trimmed.replace(wheel)
EOF
}

prepare() {
  rm -rf .whl .gpu && mkdir -p .whl .gpu
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  .venv/bin/python -m pip wheel -q --no-deps -w .whl "$ANTLR"  # pure Python: the wheel fits any machine
  trim_bitsandbytes
  .venv/bin/python - <<'EOF'
from pathlib import Path
from transformers import AutoTokenizer
from ftharness.model.embedded import resolve_model_path
path = resolve_model_path("embedded:smollm2-135m-instruct", Path.home() / ".cache" / "ftharness")
AutoTokenizer.from_pretrained(path).save_pretrained(".gpu/tokenizer")
EOF
  du -sh .whl .gpu
  echo "carry .whl and .gpu; run: bash benchmarks/gpu_trial.sh run (or big)"
}

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FTHARNESS_CACHE=/tmp/ftharness-cache
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, datasets, bitsandbytes; print('torch', torch.__version__,
'| transformers', transformers.__version__, '| peft', peft.__version__, '| datasets', datasets.__version__,
'| bitsandbytes', bitsandbytes.__version__)"
}

run() {
  local shape=${1:-deepseek-llm-7b}
  shift || true
  install
  python3 benchmarks/trial_speed.py --device cuda --random-model "$shape" --tokenizer .gpu/tokenizer "$@" \
    tracker.mode=disabled 2>&1 | tee "${OUT:-/tmp}/gpu_trial.txt"
}

profile() {
  install
  python3 benchmarks/gpu_profile.py --device cuda --tokenizer .gpu/tokenizer "$@"  # its table also into $OUT
}

big() {
  install
  python3 benchmarks/big_model.py --tokenizer .gpu/tokenizer "$@" 2>&1 | tee "${OUT:-/tmp}/big_model.txt"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  profile) shift; profile "$@" ;;
  big) shift; big "$@" ;;
  *) echo "usage: bash benchmarks/gpu_trial.sh prepare | run [SHAPE] [trial_speed.py options] | profile" \
          "[gpu_profile.py options] | big [options]" >&2
     exit 2 ;;
esac
