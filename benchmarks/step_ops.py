"""Host work per optimizer step: aten operations dispatched, host syncs, and the Python time between them, for the
harness's trial and the tutorial's stock pipeline (benchmarks/trial_speed.py's reference: stock peft, stock Trainer).

    python benchmarks/step_ops.py [--quick] [--steps 2] [--profiler] [override ...]

A step that launches thousands of small kernels and waits for the device between them runs at the host's speed, not
the GPU's (docs/speed.md: the study's trial on a 7B shape used 2.7 % of an H200's bf16 peak). What it launches and
where it waits can be counted on any machine: torch's dispatch modes see every aten operation, forward and backward.
Counted per optimizer step, from one step's start to the next (its batches fetched, micro-batches, clipping,
optimizer, logging), over `--steps` steps after the first (the optimizer's states are made there):
- aten operations that are not views (each a kernel launch on a GPU);
- host syncs, the operations that make the host wait for a GPU: a scalar read (`.item()`, `int()`, `bool()`: aten's
  `_local_scalar_dense`), `nonzero`, boolean-mask indexing, other data-dependent shapes, device-to-host copies
  (`.tolist()`, `.cpu()`). Only reads of device data count: each tensor is followed from the model's parameters,
  optimizer states and the batches moved to the device, so the DataLoader's collation and a non-fused optimizer's
  step counters (host tensors on a GPU too) do not;
- the Python time between operations (the host's own work: Trainer, peft, the harness; the dispatch mode's own
  entry included), and the time inside them.
Counts depend on the model's structure, not its width: (b) runs a narrow model (random weights, benchmarks/
random_model.py) with the 7B preset's 30 layers, targets, QLoRA base, micro-batch x accumulation and checkpointing,
in seconds here. `--quick`: the tiny model only (tests). The last line:
`step_ops: harness/reference ops per step = X, syncs per step = Y` (X on the 7B structure, or the tiny model with
--quick; Y the harness's syncs on the default study's trial).

Under the dispatch modes compiled layers run eager, so `train.compile=true` counts as eager there. `--profiler`
counts with torch's profiler instead (ProfiledSteps): the non-view aten calls that call no other non-view one, plus
the kernels of compiled code; no syncs, no times. Last line: `step_ops: harness/reference calls per step = X
(profiler)`.
"""

import argparse
import functools
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary
from transformers import TrainerCallback

from ftharness.ui.console import quiet_library_notices
from random_model import build_random_model
from trial_speed import QUICK, STUDY_TRIAL, compose, reference_trainer, tokenizer_folder

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default: "item"}
DATA_DEPENDENT = {aten.nonzero.default: "nonzero", aten.masked_select.default: "boolean mask",
                  aten.repeat_interleave.Tensor: "data-dependent shape", aten._unique2.default: "data-dependent shape",
                  aten.unique_consecutive.default: "data-dependent shape", aten.equal.default: "item"}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
HOST_COPIES = {"tolist", "numpy", "cpu"}  # Tensor methods that copy to the host (no aten operation on the CPU)
SYNC_KINDS = ("item", "nonzero", "boolean mask", "data-dependent shape", "device-to-host copy")
SEVEN_B = ["model=deepseek-llm-7b-chat", "data.eval_size=8", "data.test_size=4", "eval.max_new_tokens=0",
           "tracker.mode=disabled", "train.eval_steps=0"]  # the preset's micro 2 x 8, checkpointing, QLoRA base
NARROW_SHAPE = "deepseek-llm-7b-narrow"


def _sync_kind(func, args) -> str:
    """The kind of host sync an operation on device data is, or ''."""
    if func in SCALAR_READS:
        return SCALAR_READS[func]
    if func in DATA_DEPENDENT:
        return DATA_DEPENDENT[func]
    if func in INDEXING and any(torch.is_tensor(i) and i.dtype == torch.bool for i in args[1]):
        return "boolean mask"
    return ""


class OpCounter(TorchDispatchMode):
    """Counts non-view aten operations and the host syncs among them, and times the gaps between operations."""

    def __init__(self, on_device: WeakIdKeyDictionary):
        super().__init__()
        self.on_device = on_device  # tensors holding device data, followed through every operation
        self.ops, self.syncs, self.host_s, self.op_s = 0, Counter(), 0.0, 0.0
        self._resumed = time.perf_counter()

    def reads_device(self, tensors) -> bool:
        return any(isinstance(t, torch.Tensor) and t in self.on_device for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        entered = time.perf_counter()
        self.host_s += entered - self._resumed
        out = func(*args, **(kwargs or {}))
        self.op_s += time.perf_counter() - entered
        if self.reads_device(tree_leaves((args, kwargs))):
            self.on_device.update((t, True) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            kind = _sync_kind(func, args)
            if kind:
                self.syncs[kind] += 1
        self.ops += not func.is_view
        self._resumed = time.perf_counter()
        return out


class HostCopies(TorchFunctionMode):
    """Follows tensors moved to the device (`.to(device)`, a no-op on the CPU that no aten operation shows) and counts
    copies of device data to the host."""

    def __init__(self, counter: OpCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in HOST_COPIES and self.counter.reads_device(args[:1]):
            self.counter.syncs["device-to-host copy"] += 1
        elif name == "to" and isinstance(out, torch.Tensor):
            if out.device.type == "cpu" and args[0].device.type != "cpu":
                self.counter.syncs["device-to-host copy"] += 1
            elif "device" in (kwargs or {}) or any(isinstance(a, (str, torch.device)) for a in args[1:]):
                self.counter.on_device[out] = True
        return out


class StepOps(TrainerCallback):
    """Counts each optimizer step after the first, from its `on_step_begin` to the next step's."""

    def __init__(self):
        self.on_device = WeakIdKeyDictionary()
        self.steps = []
        self._modes = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._close(record=True)
        if state.global_step == 0:
            return
        tensors = [*model.parameters(), *model.buffers()]
        tensors += [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
        self.on_device.update((t, True) for t in tensors)
        counter = OpCounter(self.on_device)
        self._modes = (counter, HostCopies(counter), time.perf_counter())
        self._modes[0].__enter__()
        self._modes[1].__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self._close(record=False)  # the last step has no next one: its count would miss the next batch's fetch

    def _close(self, record: bool) -> None:
        if self._modes is None:
            return
        counter, copies, started = self._modes
        copies.__exit__(None, None, None)
        counter.__exit__(None, None, None)
        self._modes = None
        if record:
            self.steps.append({"ops": counter.ops, "syncs": dict(counter.syncs), "host_s": counter.host_s,
                               "op_s": counter.op_s, "wall_s": time.perf_counter() - started})

    def per_step(self) -> dict:
        count = len(self.steps)
        mean = {key: sum(step[key] for step in self.steps) / count for key in ("ops", "host_s", "op_s", "wall_s")}
        kinds = {kind: sum(step["syncs"].get(kind, 0) for step in self.steps) / count for kind in SYNC_KINDS}
        return {**mean, "syncs": sum(kinds.values()), **kinds}


class ProfiledSteps(TrainerCallback):
    """Counts each optimizer step after the first with torch's profiler in place of StepOps' dispatch modes, under
    which compiled layers run eager (`train.compile=true` counted the same as eager): the non-view aten calls that
    call no other non-view one (what the dispatch modes count, as near as the profiler shows it) plus the kernels
    of compiled code (inductor's, recorded with `cpp.enable_kernel_profile`). No syncs: the profiler does not see
    which calls read device data."""

    def __init__(self):
        self.steps = []
        self._profiler = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._close(record=True)
        if state.global_step:
            self._profiler = profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self._close(record=False)

    def _close(self, record: bool) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        if record:
            events = self._profiler.events()
            self.steps.append(sum(_is_kernel(event) for event in events))
        self._profiler = None

    def per_step(self) -> dict:
        return {"calls": sum(self.steps) / len(self.steps)}


def _is_kernel(event) -> bool:
    """A compiled kernel, or an aten call that is not a view and calls no other such call (a view inside, as
    `resolve_conj` inside a compiled step's `mm`, leaves it a kernel)."""
    if "_cpp_fused_" in event.name:  # inductor names them graph_N_cpp_fused_<ops>_M
        return True
    return _is_computing(event.name) and not any(_is_computing(child.name) for child in event.cpu_children)


def _is_computing(name: str) -> bool:
    return name.startswith("aten::") and not _is_view(name)


@functools.cache
def _is_view(name: str) -> bool:
    packet = getattr(aten, name.split("::", 1)[1], None)
    return packet is not None and any(getattr(packet, overload).is_view for overload in packet.overloads())


def count_reference(cfg, scratch: Path, counter_class=StepOps) -> dict:
    counter = counter_class()
    trainer = reference_trainer(cfg, scratch / "reference")
    trainer.add_callback(counter)
    trainer.train()
    return counter.per_step()


def count_harness(cfg, scratch: Path, counter_class=StepOps) -> dict:
    from ftharness.trial.recipe import run_trial

    counter = counter_class()
    run_dir = scratch / "harness"
    run_dir.mkdir()
    run_trial(cfg, run_dir, "step-ops", {}, extra_callbacks=[counter])
    return counter.per_step()


def count_both(overrides, steps: int, scratch: Path, counter_class=StepOps) -> dict:
    cfg = compose([*overrides, f"train.max_steps={steps + 2}", "train.eval_steps=0", "train.device=cpu"])
    scratch.mkdir(parents=True)
    return {"reference": count_reference(cfg, scratch, counter_class),
            "harness": count_harness(cfg, scratch, counter_class)}


ROWS = [("aten ops (non-view)", "ops", 0), ("host syncs", "syncs", 1),
        *((f"  of which {kind}", kind, 1) for kind in SYNC_KINDS),
        ("Python time between ops, s", "host_s", 3), ("time in ops, s", "op_s", 3), ("step wall time, s", "wall_s", 3)]
PROFILER_ROWS = [("leaf aten calls (non-view) + compiled kernels", "calls", 0)]


def table(cases: dict, rows=ROWS) -> str:
    header = "| per optimizer step | " + " | ".join(f"{case}: reference | harness | harness / reference"
                                                   for case in cases) + " |"
    lines = [header, "|---|" + "---|---|---|" * len(cases)]
    for label, key, digits in rows:
        cells = []
        for counts in cases.values():
            reference, harness = counts["reference"][key], counts["harness"][key]
            ratio = f"{harness / reference:.2f}x" if reference else "—"
            cells += [f"{reference:,.{digits}f}", f"{harness:,.{digits}f}", ratio]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only: for tests")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps counted (after a first one)")
    parser.add_argument("--profiler", action="store_true",
                        help="count with torch's profiler, which sees compiled steps (train.compile=true); no syncs")
    parser.add_argument("overrides", nargs="*", help="config overrides for both, e.g. train.share_prefix=false")
    args = parser.parse_args()
    counter_class = ProfiledSteps if args.profiler else StepOps
    if args.profiler:
        torch._inductor.config.cpp.enable_kernel_profile = True  # compiled kernels show in the profile
    cases = {}
    with tempfile.TemporaryDirectory(prefix="step_ops-") as scratch:
        scratch = Path(scratch)
        if args.quick:
            cases["tiny model"] = count_both([*QUICK, *args.overrides], args.steps, scratch / "tiny", counter_class)
        else:
            study_trial = [*STUDY_TRIAL, "tracker.mode=disabled", "data.test_size=8", *args.overrides]
            cases["SmolLM2, study trial"] = count_both(study_trial, args.steps, scratch / "smollm2", counter_class)
            tokenizer = tokenizer_folder(STUDY_TRIAL)
            build_random_model(NARROW_SHAPE, tokenizer, scratch / "narrow")
            cases["7B structure, narrow"] = count_both([*SEVEN_B, f"model.name_or_path={scratch / 'narrow'}",
                                                        *args.overrides], args.steps, scratch / "7b", counter_class)
    print(f"per optimizer step, the mean of {args.steps} steps after the first; CPU, {torch.get_num_threads()} "
          f"threads; overrides: {' '.join(args.overrides) or 'none'}; counted by "
          f"{'torch.profiler' if args.profiler else 'dispatch modes'}\n")
    print(table(cases, PROFILER_ROWS if args.profiler else ROWS))
    first, last = next(iter(cases.values())), list(cases.values())[-1]
    if args.profiler:
        print(f"\nstep_ops: harness/reference calls per step = "
              f"{last['harness']['calls'] / last['reference']['calls']:.2f} (profiler)")
        return
    print(f"\nstep_ops: harness/reference ops per step = {last['harness']['ops'] / last['reference']['ops']:.2f}, "
          f"syncs per step = {first['harness']['syncs']:.1f}")


if __name__ == "__main__":
    main()
