"""Precision chosen from the hardware: bf16 autocast only on CPUs with bf16 instructions, weights kept fp32."""

from pathlib import Path

import pytest
import torch

from conftest import compose_config
from ftharness import hardware
from ftharness.hardware import resolve_hardware
from ftharness.models import load_base
from ftharness.training import training_arguments


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has exactly the given instruction-set flags."""
    def pretend(*flags):
        monkeypatch.setattr(hardware.torch.cpu, "get_capabilities", lambda: {flag: True for flag in flags})
    return pretend


@pytest.mark.parametrize("flags, precision", [
    (("avx512_f", "avx512_bf16"), "bf16"),
    (("avx512_f", "amx_tile", "amx_bf16"), "bf16"),
    (("avx512_f", "avx2"), "fp32"),
    ((), "fp32"),
])
def test_auto_precision_on_the_cpu_follows_its_bf16_flags_and_keeps_fp32_weights(cpu_flags, flags, precision):
    cpu_flags(*flags)
    hw = resolve_hardware(compose_config("train.device=cpu"))
    assert (hw.device, hw.precision, hw.model_dtype, hw.compute_dtype) == ("cpu", precision, "float32", "float32")


def test_an_explicit_precision_wins_over_the_cpu_flags(cpu_flags):
    cpu_flags("amx_bf16")
    assert resolve_hardware(compose_config("train.device=cpu", "train.precision=fp32")).precision == "fp32"
    cpu_flags()
    assert resolve_hardware(compose_config("train.device=cpu", "train.precision=bf16")).precision == "bf16"
    assert resolve_hardware(compose_config("train.device=cpu", "model.dtype=bfloat16")).model_dtype == "bfloat16"


def test_bf16_autocast_trains_fp32_weights(cpu_flags, tmp_path):
    """The Trainer autocasts to bf16 while the base (and so the LoRA adapter and optimizer state) stays fp32."""
    cpu_flags("avx512_bf16")
    cfg = compose_config("train.device=cpu")
    hw = resolve_hardware(cfg)
    args = training_arguments(cfg, hw, tmp_path)
    assert args.bf16 and not args.fp16
    model, _, _ = load_base(cfg, hw, Path(cfg.cache_dir))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
