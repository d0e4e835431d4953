"""LoRA adapters on the loaded base: a fresh one per trial, removed again afterwards; saved ones reloaded.

`attach_adapter` puts a fresh adapter, initialised from the trial's seed, on the base that
ftharness/model/loading.py keeps, with the faster LoRA layers of ftharness/model/lean_lora.py; `detach_adapter`
leaves the base exactly as it was loaded, the k-bit preparation, checkpointing and hooks of the trial undone. A
saved adapter goes onto the unquantized base (merge, compare).
"""

from pathlib import Path
from typing import Iterable, Iterator, Tuple

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from ftharness.config.validation import target_module_names
from ftharness.model.lean_lora import use_cpu_dropout, use_lean_lora_forward
from ftharness.model.loading import load_unquantized_base, restore_as_loaded


def _train_in_fp32(model: torch.nn.Module) -> None:
    """Upcast what trains on a bf16 base (peft keeps LoRA weights fp32, but copies a classification head in the
    base's dtype), so the optimizer never updates bf16 weights."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def attach_adapter(model: PreTrainedModel, cfg: DictConfig, task_type: str = "CAUSAL_LM") -> PeftModel:
    """A fresh LoRA adapter on the base, initialised from the trial's seed (set by the caller).

    For `SEQ_CLS` peft also trains (a copy of) the classification head, which `detach_adapter` drops again. A
    quantized base is prepared for k-bit training by every trial, with its own checkpointing: `detach_adapter`
    undoes the preparation.
    """
    if cfg.lora.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        use_rslora=cfg.lora.scaling == "rslora", target_modules=target_module_names(cfg),
                        bias=cfg.lora.bias, task_type=task_type)
    adapted = get_peft_model(model, config)
    use_lean_lora_forward(adapted)
    if model.device.type == "cpu":
        use_cpu_dropout(adapted)
        _train_in_fp32(adapted)
    return adapted


def detach_adapter(model) -> None:
    """Remove the adapter's layers, and what the trial changed on a cached base, so that it is exactly what was
    loaded (ftharness/model/loading.py `AsLoaded`)."""
    if isinstance(model, PeftModel):
        restore_as_loaded(model.unload())


def count_parameters(model: torch.nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the elements they stand for."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel() * (2 if parameter.__class__.__name__ == "Params4bit" else 1)
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def load_adapted_base(cfg: DictConfig, adapter_dir: Path, dtype: str, device: str = "cpu") -> PeftModel:
    """A run's saved adapter on its unquantized base: what a merge folds in, and what its logits must match."""
    return PeftModel.from_pretrained(load_unquantized_base(cfg, dtype, device), adapter_dir)


def each_adapter_in_turn(base: PreTrainedModel, adapter_dirs: Iterable[Path]) -> Iterator[PeftModel]:
    """Each saved adapter on the one loaded base, removed again before the next: the base loads only once."""
    for adapter_dir in adapter_dirs:
        adapted = PeftModel.from_pretrained(base, adapter_dir)
        try:
            yield adapted
        finally:
            detach_adapter(adapted)
