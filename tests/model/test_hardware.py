"""Precision chosen from the hardware: bf16 autocast only on CPUs with bf16 instructions, trained weights kept fp32."""

from pathlib import Path

import pytest
import torch

from conftest import compose_config
from ftharness.model import hardware
from ftharness.model.adapters import attach_adapter, detach_adapter
from ftharness.model.hardware import resolve_hardware
from ftharness.model.loading import load_base
from ftharness.trial.trainer import training_arguments


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has exactly the given instruction-set flags."""
    def pretend(*flags):
        monkeypatch.setattr(hardware.torch.cpu, "get_capabilities", lambda: {flag: True for flag in flags})
    return pretend


@pytest.mark.parametrize("flags, precision, base_dtype", [
    (("avx512_f", "avx512_bf16"), "bf16", "bfloat16"),
    (("avx512_f", "amx_tile", "amx_bf16"), "bf16", "bfloat16"),
    (("avx512_f", "avx2"), "fp32", "float32"),
    ((), "fp32", "float32"),
])
def test_auto_precision_on_the_cpu_follows_its_bf16_flags(cpu_flags, flags, precision, base_dtype):
    cpu_flags(*flags)
    hw = resolve_hardware(compose_config("train.device=cpu", "train.precision=auto"))
    assert (hw.device, hw.precision, hw.model_dtype, hw.compute_dtype) == ("cpu", precision, base_dtype, "float32")


@pytest.mark.parametrize("base", ["lora=none", "lora=qlora"])
def test_a_trained_or_quantized_base_stays_fp32_under_bf16_autocast_on_the_cpu(cpu_flags, base):
    cpu_flags("amx_bf16")
    hw = resolve_hardware(compose_config("train.device=cpu", "train.precision=auto", base))
    assert (hw.precision, hw.model_dtype, hw.compute_dtype) == ("bf16", "float32", "float32")


def test_an_explicit_precision_wins_over_the_cpu_flags(cpu_flags):
    cpu_flags("amx_bf16")
    assert resolve_hardware(compose_config("train.device=cpu", "train.precision=fp32")).precision == "fp32"
    cpu_flags()
    assert resolve_hardware(compose_config("train.device=cpu", "train.precision=bf16")).precision == "bf16"
    hw = resolve_hardware(compose_config("train.device=cpu", "train.precision=auto", "model.dtype=bfloat16"))
    assert hw.model_dtype == "bfloat16"


@pytest.mark.parametrize("flags, overrides, attention", [
    (("amx_bf16",), [], "eager"),  # bf16 on the CPU, the embedded task's 128-token rows
    (("amx_bf16",), ["data.max_length=129"], "sdpa"),  # longer rows: flash attention, no heads x length^2 scores kept
    ((), [], "sdpa"),  # fp32 on the CPU
    (("amx_bf16",), ["train.precision=fp32"], "sdpa"),
    ((), ["model.attention=eager", "data.max_length=2048"], "eager"),  # an explicit choice wins
])
def test_auto_attention_is_eager_only_for_short_rows_under_bf16_on_the_cpu(cpu_flags, flags, overrides, attention):
    cpu_flags(*flags)
    cfg = compose_config("train.device=cpu", "train.precision=auto", *overrides)
    assert resolve_hardware(cfg).attention == attention


def test_the_base_loads_with_the_chosen_attention(cpu_flags):
    cpu_flags("amx_bf16")
    for overrides, attention in ([[], "eager"], [["model.attention=sdpa"], "sdpa"]):
        cfg = compose_config("train.device=cpu", "train.precision=auto", *overrides)
        model, _, _ = load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))
        assert model.config._attn_implementation == attention


def test_bf16_autocast_trains_fp32_adapter_weights_on_a_bf16_base(cpu_flags, tmp_path):
    """The Trainer autocasts to bf16; the frozen base loads in bf16, the LoRA adapter (and so its optimizer
    state) stays fp32."""
    cpu_flags("avx512_bf16")
    cfg = compose_config("train.device=cpu", "train.precision=auto")
    hw = resolve_hardware(cfg)
    args = training_arguments(cfg, hw, tmp_path)
    assert args.bf16 and not args.fp16
    model, _, _ = load_base(cfg, hw, Path(cfg.cache_dir))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    adapted = attach_adapter(model, cfg)
    try:
        trained = [p for p in adapted.parameters() if p.requires_grad]
        assert trained and {p.dtype for p in trained} == {torch.float32}
    finally:
        detach_adapter(adapted)


def test_the_labelled_loss_trains_and_evaluates_under_bf16_autocast(cpu_flags, tmp_path):
    """accelerate autocasts the model's forward; the labelled loss calls the decoder, so the trainer must
    autocast it itself, or bf16 silently trains in fp32."""
    from ftharness.data.splits import load_splits
    from ftharness.trial.tasks import TASKS

    cpu_flags("amx_bf16")
    cfg = compose_config("train.device=cpu", "train.precision=auto", "train.max_steps=1", "train.eval_steps=0")
    hw = resolve_hardware(cfg)
    task = TASKS["sft"]
    model, tokenizer, path = load_base(cfg, hw, Path(cfg.cache_dir))
    train_set, eval_set = task.datasets(cfg, tokenizer, load_splits(cfg.data), Path(cfg.cache_dir), path)
    adapted = attach_adapter(model, cfg)
    seen = []
    layer = adapted.get_base_model().get_decoder().layers[0].self_attn.q_proj  # a LoRA layer: base product + update
    hook = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    try:
        trainer = task.trainer(cfg, hw, adapted, tokenizer, train_set, eval_set, tmp_path, [])
        trainer.train()
        trainer.evaluate()
    finally:
        hook.remove()
        detach_adapter(adapted)
    assert seen and set(seen) == {torch.bfloat16}


def test_peak_memory_on_the_cpu_is_each_trials_own_and_grows_with_the_batch(tmp_path):
    """Trials in one process, the largest batch first: each reads its own training steps' high-water mark
    (reset when training starts and after each evaluation), not the process's peak so far."""
    from ftharness.trial.recipe import run_trial

    peaks = {}
    for batch in (32, 2, 8):
        cfg = compose_config("train.device=cpu", f"train.per_device_batch_size={batch}", "train.max_steps=3",
                             "data.train_size=96", "data.max_length=512", "train.save_adapter=false",
                             "eval.max_new_tokens=0")
        (tmp_path / str(batch)).mkdir()
        summary = run_trial(cfg, tmp_path / str(batch), str(batch), {})
        assert summary.memory_kind == "cpu_rss_training"
        peaks[batch] = summary.peak_memory_mb
    assert peaks[2] < peaks[8] < peaks[32], peaks
    assert peaks[32] - peaks[2] > 20, peaks  # MB: 30 more rows of ~80 characters through 2 layers and back
