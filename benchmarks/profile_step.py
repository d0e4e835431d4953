"""Where the time of one optimizer step goes: torch.profiler over a few steps of the harness's trainer.

    python benchmarks/profile_step.py [--steps 2] [--skip 2] [--compile] [override ...]

Builds the default trial's trainer (the same task, collator, loss and arguments as a trial), trains
`--skip` steps unprofiled (warm-up: allocator, thread pools, first-call dispatch), profiles the next
`--steps`, and prints the ops with the most self CPU time and the step's time by kind: matrix products
(mm / addmm / bmm / attention kernels), copies and dtype casts (autocast's among them), the optimizer step, and the rest
(elementwise ops, norms, activations, the Trainer's own work). `--compile` compiles the decoder with
torch.compile first; the warm-up steps' time shows what compiling costs.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback, set_seed

from ftharness.ui.console import quiet_library_notices
from trial_speed import QUICK, STUDY_TRIAL, compose

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product", "mkldnn",
          "aten::_flash_attention", "aten::_efficient_attention")
CASTS = ("aten::copy_", "aten::_to_copy")
OPTIMIZER = "Optimizer.step"


class StepProfiler(TrainerCallback):
    """Profiles optimizer steps skip+1 .. skip+steps and times them."""

    def __init__(self, skip: int, steps: int):
        self.skip, self.steps = skip, steps
        self.profiler = profile(activities=[ProfilerActivity.CPU])
        self.seconds = 0.0
        self.tokens = 0
        self._start = 0.0
        self._train_start = time.perf_counter()
        self.warmup_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._train_start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.skip:
            self.warmup_seconds = time.perf_counter() - self._train_start
            self.profiler.__enter__()
            self.tokens = -state.num_input_tokens_seen
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.skip < state.global_step <= self.skip + self.steps:
            self.seconds += time.perf_counter() - self._start
        if state.global_step == self.skip + self.steps:
            self.profiler.__exit__(None, None, None)
            self.tokens += state.num_input_tokens_seen
            control.should_training_stop = True


def by_kind(events, total_us: float) -> dict:
    kinds = {"matrix products": 0.0, "copies and dtype casts": 0.0, "optimizer step (total)": 0.0}
    for event in events:
        if event.key.startswith(OPTIMIZER):
            kinds["optimizer step (total)"] += event.cpu_time_total
        elif any(event.key.startswith(m) for m in MATMUL):
            kinds["matrix products"] += event.self_cpu_time_total
        elif event.key in CASTS:
            kinds["copies and dtype casts"] += event.self_cpu_time_total
    kinds["the rest"] = total_us - sum(kinds.values())
    return kinds


def main() -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model: for tests")
    parser.add_argument("--steps", type=int, default=2, help="steps profiled")
    parser.add_argument("--skip", type=int, default=2, help="steps trained before profiling")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.precision=fp32")
    args = parser.parse_args()
    from ftharness.data.splits import load_splits
    from ftharness.model.adapters import attach_adapter
    from ftharness.model.hardware import resolve_hardware
    from ftharness.model.loading import load_base
    from ftharness.trial.tasks import TASKS

    cfg = compose([*(QUICK if args.quick else STUDY_TRIAL), "train.eval_steps=0",
                   f"train.max_steps={args.skip + args.steps}", *args.overrides])
    hw = resolve_hardware(cfg)
    task = TASKS[cfg.task.name]
    splits = load_splits(cfg.data)
    model, tokenizer, model_path = load_base(cfg, hw, Path(cfg.cache_dir))
    train_set, eval_set = task.datasets(cfg, tokenizer, splits, Path(cfg.cache_dir), model_path)
    set_seed(cfg.seed)
    adapted = attach_adapter(model, cfg, task.peft_task_type)
    if args.compile:
        adapted.get_base_model().get_decoder().compile()
    profiler = StepProfiler(args.skip, args.steps)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = task.trainer(cfg, hw, adapted, tokenizer, train_set, eval_set, Path(run_dir), [profiler])
        trainer.train()
    events = profiler.profiler.key_averages()
    total_us = profiler.seconds * 1e6
    print(f"precision {hw.precision}, {torch.get_num_threads()} threads, batch {cfg.train.per_device_batch_size}: "
          f"{profiler.seconds / args.steps:.3f} s per step, {profiler.tokens / profiler.seconds:.0f} tokens/s "
          f"({args.steps} steps profiled after {args.skip}, which took {profiler.warmup_seconds:.1f} s; "
          f"the profiler's own overhead included){', decoder compiled' if args.compile else ''}\n")
    print("| kind | s per step | share |\n|---|---|---|")
    for kind, us in by_kind(events, total_us).items():
        print(f"| {kind} | {us / 1e6 / args.steps:.3f} | {us / total_us:.2f} |")
    print("\n| op (self CPU time) | calls per step | s per step | share |\n|---|---|---|---|")
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]:
        print(f"| {event.key} | {event.count // args.steps} | {event.self_cpu_time_total / 1e6 / args.steps:.3f} "
              f"| {event.self_cpu_time_total / total_us:.2f} |")


if __name__ == "__main__":
    main()
