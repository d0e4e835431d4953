"""Nothing a trial does to the cached base survives it: the next trial of the process runs as on a fresh load."""

from collections import Counter
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

from conftest import compose_config
from ftharness.model.hardware import resolve_hardware
from ftharness.model.loading import forget_base, load_base
from ftharness.trial import recipe

HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class _OpCounter(TorchDispatchMode):
    def __init__(self, ops: Counter):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


class StepOps(TrainerCallback):
    """The aten operations dispatched in one optimizer step (forward, backward, clipping, optimizer), by name."""

    def __init__(self, step: int):
        self.step, self.ops, self._counting = step, Counter(), None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self._counting = _OpCounter(self.ops)
            self._counting.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._counting is not None:
            self._counting.__exit__(None, None, None)
            self._counting = None


def _load(cfg):
    return load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))[0]


def _state(model) -> dict:
    """What a trial may change on the base and a fresh load fixes: checkpointing, hooks, modes, trainable
    flags and dtypes, config."""
    return {"checkpointing": model.is_activation_checkpointing,
            "hooks": {name: [len(getattr(m, h)) for h in HOOKS] for name, m in model.named_modules()},
            "training": {name: m.training for name, m in model.named_modules()},
            "parameters": {name: (p.requires_grad, p.dtype) for name, p in model.named_parameters()},
            "config": model.config.to_dict(), "generation": model.generation_config.to_dict()}


def _trial(tmp_path: Path, name: str, *overrides: str) -> Counter:
    run_dir = tmp_path / name
    run_dir.mkdir()
    counted = StepOps(2)
    summary = recipe.run_trial(compose_config("train.max_steps=2", *overrides), run_dir, name, {}, [counted])
    assert summary.status == "completed"
    return counted.ops


# model.dtype=bfloat16: the 4-bit base keeps its norms and embeddings in bf16, which peft's k-bit preparation casts
@pytest.mark.parametrize("base", [["lora=lora"], ["lora=qlora", "model.dtype=bfloat16"]], ids=["lora", "qlora"])
def test_a_trial_without_checkpointing_after_one_with_it_runs_as_on_a_fresh_base(tmp_path, base):
    """The second trial of a process against the same trial in a fresh one (base and its measurements dropped:
    bitsandbytes repacks 4-bit weights for the CPU at the first inference, the base's measurement)."""
    forget_base()
    recipe._base_results.clear()
    fresh = _state(_load(compose_config(*base)))
    checkpointed = _trial(tmp_path, "on", *base, "train.gradient_checkpointing=true")
    after = _trial(tmp_path, "off", *base)
    left = _state(_load(compose_config(*base)))
    forget_base()
    recipe._base_results.clear()
    alone = _trial(tmp_path, "alone", *base)
    forget_base()
    assert after == alone and sum(checkpointed.values()) > sum(alone.values())  # the recomputed forward
    assert left == fresh
