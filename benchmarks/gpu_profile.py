"""Where a trial's optimizer step spends its time, per variant of the study's trial: timed steps, then steps under
torch's profiler with the device's activity: kernel launches, host syncs, device-to-host copies, the device's busy
share of the wall time, its top kernels, peak memory.

    python benchmarks/gpu_profile.py [--quick] [--device cuda] [--shape deepseek-llm-7b] [--tokenizer DIR]
                                     [--variants today,share_prefix=true,...] [override ...]

`bash benchmarks/gpu_trial.sh profile` runs it on a GPU machine without network (docs/speed.md). The model is the
shape's Llama with random weights built in memory on the device (benchmarks/random_model.py's config; no weights
written to disk: a 7B shape is 13.8 GB), loaded once: every variant's trial takes that base from the harness's cache
of the process (ftharness/model/loading.py), as the later trials of a sweep do. A variant is the default study's
trial (ftharness/trial/recipe.py run_trial, its batches and LoRA) with overrides or one lever undone:
- `today`: the harness as it is (on a GPU, `train.share_prefix=auto` shares the prefix in evaluation only);
- `compiled`, `compiled, micro 16x1`: `train.compile=true` (ftharness/trial/compiled.py; its compile falls in the
  warm-up steps, the first variant to compile pays inductor's cold cache);
- `share_prefix=true`, `compiled, share_prefix=true`: the batch's shared prefix run once in training too (a second
  decoder call), eager and compiled;
- `micro 16x1`, `micro 1x8`, `micro 2x4`, `micro 4x2`: micro-batch x accumulation (8x1 is today's);
- `checkpointing`: `train.gradient_checkpointing=true`;
- `peft forward`: peft's own LoRA forward in place of ftharness/model/lean_lora.py's.
The variants run in that order, the questions a GPU run must answer first (is the compile worth it, at which batch
shape) ahead of the rest, and the table is written after each one: a run stopped by its time limit keeps the
variants it finished. A variant that raises is a row with its error; the next one runs. Each trains WARMUP steps,
then TIMED steps timed between synchronized step boundaries, then PROFILED steps under the profiler. Per optimizer
step: seconds, tokens/s, kernel launches (the runtime's launch calls), host syncs (the runtime's synchronize calls),
device-to-host copies, aten calls (nested ones included: benchmarks/step_ops.py counts operations exactly), device
busy time over wall time (the profiled steps' kernel, copy and set time, summed), the top kernels by device time;
and the peak of allocated device memory. On a CPU (the suite's `--quick`: the tiny shape, 1 + 2 + 1 steps, two
variants) the device columns are empty and the profiler counts aten operations instead. The table goes to stdout at
the end and, when OUT is set, to $OUT/gpu_profile.txt after each variant (a line on stderr says each one's end).
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer, TrainerCallback

from ftharness.contract import Status
from ftharness.ui.console import quiet_library_notices
from random_model import random_config
from trial_speed import QUICK, STUDY_TRIAL, compose, tokenizer_folder

WARMUP, TIMED, PROFILED = 3, 8, 2  # steps per variant; --quick: 1, 2, 1
LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch"}
SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}
VARIANTS = {  # in the order of what a GPU run must answer first: a run cut short keeps the variants it finished
    "today": [],
    "compiled": ["train.compile=true"],
    "share_prefix=true": ["train.share_prefix=true"],
    "compiled, share_prefix=true": ["train.compile=true", "train.share_prefix=true"],
    "micro 16x1": ["train.per_device_batch_size=16", "train.grad_accum_steps=1"],
    "compiled, micro 16x1": ["train.compile=true", "train.per_device_batch_size=16", "train.grad_accum_steps=1"],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "peft forward": [],  # ftharness/model/lean_lora.py left out (`peft_forward`)
    "micro 1x8": ["train.per_device_batch_size=1", "train.grad_accum_steps=8"],
    "micro 2x4": ["train.per_device_batch_size=2", "train.grad_accum_steps=4"],
    "micro 4x2": ["train.per_device_batch_size=4", "train.grad_accum_steps=2"],
}
QUICK_VARIANTS = ("today", "share_prefix=true")
TRIAL = ["data.eval_size=8", "data.test_size=8", "train.eval_steps=0", "train.save_adapter=false",
         "eval.max_new_tokens=0", "tracker.mode=disabled"]  # the study's trial, with little to do around its steps


# ---- the base, built in memory -------------------------------------------------------------------------

@contextlib.contextmanager
def random_base_in_memory(folder: Path) -> Iterator[None]:
    """While open, the harness's base loading builds the model of `folder` (its config.json and tokenizer, written
    by `write_random_folder`) with random weights on the trial's device, in the dtype the harness chose; any other
    path loads as usual. transformers initialises the weights as for a fresh Llama (N(0, 0.02), norms ones)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftharness.model import loading
    from ftharness.model.hardware import TORCH_DTYPES

    load_model = loading._load_model

    def build(path, cfg, hw, num_labels):
        if Path(path) != folder:
            return load_model(path, cfg, hw, num_labels)
        config = AutoConfig.from_pretrained(path)
        with torch.device(hw.device):
            return AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[hw.model_dtype],
                                                    attn_implementation=hw.attention)

    loading._load_model = build
    try:
        yield
    finally:
        loading._load_model = load_model


def write_random_folder(shape: str, tokenizer_dir: str, folder: Path) -> None:
    """A model folder without weights: the shape's config.json (its vocabulary at least the tokenizer's) and the
    tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    random_config(shape, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def peft_forward() -> Iterator[None]:
    """Adapters attached while open keep peft's LoRA forward (ftharness/model/lean_lora.py's is not swapped in)."""
    from ftharness.model import adapters

    lean = adapters.use_lean_lora_forward
    adapters.use_lean_lora_forward = lambda model: None
    try:
        yield
    finally:
        adapters.use_lean_lora_forward = lean


# ---- one variant ---------------------------------------------------------------------------------------

class StepWindows(TrainerCallback):
    """Times the steps after `warmup` for `timed` steps, between synchronized step boundaries, then profiles
    `profiled` steps."""

    def __init__(self, device: str, warmup: int, timed: int, profiled: int):
        self.device, self.warmup, self.timed, self.profiled = device, warmup, timed, profiled
        self.seconds = self.profiled_seconds = 0.0
        self.tokens = 0
        self.profiler: Optional[profile] = None
        self._started, self._tokens_then = 0.0, 0

    def _now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._started, self._tokens_then = self._now(), state.num_input_tokens_seen
        elif state.global_step == self.warmup + self.timed:
            self.seconds = self._now() - self._started
            self.tokens = state.num_input_tokens_seen - self._tokens_then
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
            self.profiler = profile(activities=activities)
            self.profiler.start()
            self._started = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup + self.timed + self.profiled and self.profiler is not None:
            self.profiled_seconds = self._now() - self._started
            self.profiler.stop()


def profiled_counts(profiler: profile, steps: int, wall_s: float, on_gpu: bool) -> dict:
    """Per step: aten calls and, on a GPU, launches, syncs and device-to-host copies; the device's busy share of
    `wall_s` and its top kernels."""
    rows = profiler.key_averages()
    on_device = [row for row in rows if row.device_type.name == "CUDA"]
    busy_us = sum(row.self_device_time_total for row in on_device)
    top = sorted(on_device, key=lambda row: row.self_device_time_total, reverse=True)[:3]

    def count(match, gpu_only: bool = True) -> Optional[float]:
        return sum(row.count for row in rows if match(row.key)) / steps if on_gpu or not gpu_only else None

    return {"launches": count(LAUNCHES.__contains__), "syncs": count(SYNCS.__contains__),
            "d2h": count(lambda key: key.startswith("Memcpy DtoH")),
            "aten_calls": count(lambda key: key.startswith("aten::"), gpu_only=False),
            "busy": busy_us / 1e6 / wall_s if on_gpu else None,
            "top": [(row.key[:48], row.self_device_time_total / max(busy_us, 1)) for row in top]}


def run_variant(name: str, overrides: List[str], device: str, steps: tuple) -> dict:
    """The variant's row; an error it raised is its status (a compile or a batch shape the device cannot take must
    not cost the variants after it)."""
    try:
        return _timed_and_profiled(name, overrides, device, steps)
    except Exception as error:  # noqa: BLE001 -- any failure is the variant's finding
        said = " ".join(str(error).split()).replace("|", "/")[:200]  # one table cell
        return {"name": name, "status": f"error: {type(error).__name__}: {said}"}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def _timed_and_profiled(name: str, overrides: List[str], device: str, steps: tuple) -> dict:
    from ftharness.trial.recipe import run_trial

    warmup, timed, profiled = steps
    cfg = compose([*overrides, f"train.max_steps={warmup + timed + profiled}", f"train.device={device}"])
    windows = StepWindows(device, warmup, timed, profiled)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="gpu_profile-") as run_dir, \
            (peft_forward() if name == "peft forward" else contextlib.nullcontext()):
        summary = run_trial(cfg, Path(run_dir), name, {}, extra_callbacks=[windows])
    if summary.status != Status.COMPLETED:
        return {"name": name, "status": f"{summary.status}: {summary.reason}"}
    return {"name": name, "status": "completed", "s_per_step": windows.seconds / timed,
            "tokens_per_s": windows.tokens / windows.seconds,
            "micro": f"{cfg.train.per_device_batch_size}x{cfg.train.grad_accum_steps}",
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            **profiled_counts(windows.profiler, profiled, windows.profiled_seconds, device == "cuda")}


# ---- the table -----------------------------------------------------------------------------------------

COLUMNS = [("variant", "name", "{}"), ("micro x accum", "micro", "{}"), ("s/step", "s_per_step", "{:.3f}"),
           ("tokens/s", "tokens_per_s", "{:,.0f}"), ("launches/step", "launches", "{:,.0f}"),
           ("syncs/step", "syncs", "{:.1f}"), ("D2H copies/step", "d2h", "{:.1f}"),
           ("aten calls/step", "aten_calls", "{:,.0f}"), ("device busy", "busy", "{:.0%}"),
           ("peak MB", "peak_mb", "{:,.0f}")]


def table(results: List[dict]) -> str:
    lines = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " | top kernels (share of busy time) |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for result in results:
        if result["status"] != "completed":
            lines.append(f"| {result['name']} | {result['status']} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = ["—" if result.get(key) is None else form.format(result[key]) for _, key, form in COLUMNS]
        top = "; ".join(f"{kernel} {share:.0%}" for kernel, share in result["top"]) or "—"
        lines.append("| " + " | ".join(cells) + f" | {top} |")
    return "\n".join(lines)


def main() -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny shape, two variants, 1 + 2 + 1 steps: tests")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="deepseek-llm-7b", help="benchmarks/random_model.py RANDOM_SHAPES")
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded SmolLM2's)")
    parser.add_argument("--variants", help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant")
    args = parser.parse_args()
    shape, steps = ("tiny", (1, 2, 1)) if args.quick else (args.shape, (WARMUP, TIMED, PROFILED))
    names = args.variants.split(",") if args.variants else list(QUICK_VARIANTS if args.quick else VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} unknown; allowed: {', '.join(VARIANTS)}")
    base = [*STUDY_TRIAL, *TRIAL, *(QUICK[1:] if args.quick else []), *args.overrides]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    results: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_profile-model-") as folder:
        folder = Path(folder)
        write_random_folder(shape, args.tokenizer or tokenizer_folder(base), folder)
        started = time.perf_counter()
        with random_base_in_memory(folder):
            for name in names:
                results.append(run_variant(name, [*base, f"model.name_or_path={folder}", *VARIANTS[name]],
                                           args.device, steps))
                elapsed = time.perf_counter() - started
                print(f"gpu_profile: {name}: {results[-1]['status']} ({elapsed:.0f} s so far)", file=sys.stderr)
                text = (f"{where}; {shape} with random weights built on the device; the study's trial, per optimizer "
                        f"step: {steps[1]} timed steps after {steps[0]}, {steps[2]} profiled; {elapsed:.0f} s for "
                        f"{len(results)} of {len(names)} variants\n\n{table(results)}\n")
                if os.environ.get("OUT"):
                    Path(os.environ["OUT"], "gpu_profile.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
