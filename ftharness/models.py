"""Base models and LoRA adapters.

A sweep trains the same base many times, so a worker process loads (and quantizes) its base once and
keeps it: each trial attaches a fresh adapter and removes it afterwards, leaving the base as loaded.
Full fine-tuning changes the base weights, so that base is dropped after its trial.
"""

import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from ftharness.config import target_module_names
from ftharness.embedded import resolve_model_path
from ftharness.hardware import TORCH_DTYPES, Hardware

log = logging.getLogger(__name__)

_loaded: Dict[tuple, Tuple[PreTrainedModel, object]] = {}


def _quantization_config(cfg: DictConfig, hw: Hardware) -> Optional[BitsAndBytesConfig]:
    if cfg.lora.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.lora.quant_type,
                                  bnb_4bit_use_double_quant=cfg.lora.double_quant,
                                  bnb_4bit_compute_dtype=TORCH_DTYPES[hw.compute_dtype])
    if cfg.lora.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _load_tokenizer(path: str, cfg: DictConfig):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.chat_template:
        tokenizer.chat_template = cfg.model.chat_template
    if tokenizer.chat_template is None:
        raise ValueError(f"model.name_or_path={cfg.model.name_or_path!r} has no chat template: set model.chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _load_model(path: str, cfg: DictConfig, hw: Hardware) -> PreTrainedModel:
    quantization = _quantization_config(cfg, hw)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=TORCH_DTYPES[hw.model_dtype], quantization_config=quantization,
        trust_remote_code=cfg.model.trust_remote_code,
        device_map={"": 0 if hw.device == "cuda" else "cpu"} if quantization else None)
    if quantization is None:
        model.to(hw.device)
    return model


def load_base(cfg: DictConfig, hw: Hardware, cache_dir: Path):
    """(model, tokenizer, resolved path) for this config, reused from the last trial when the base is the same."""
    path = resolve_model_path(cfg.model.name_or_path, cache_dir)
    key = (path, cfg.model.chat_template, cfg.model.trust_remote_code, cfg.lora.quantization, cfg.lora.quant_type,
           cfg.lora.double_quant, hw)
    if key not in _loaded:
        _loaded.clear()  # one base per process: a sweep over models must not keep them all in memory
        log.info("loading base model %s", path)
        _loaded[key] = (_load_model(path, cfg, hw), _load_tokenizer(path, cfg))
    model, tokenizer = _loaded[key]
    return model, tokenizer, path


def forget_base() -> None:
    """Drop the cached base (after full fine-tuning changed its weights)."""
    _loaded.clear()


def attach_adapter(model: PreTrainedModel, cfg: DictConfig) -> PeftModel:
    """A fresh LoRA adapter on the base, initialised from the trial's seed (set by the caller)."""
    if cfg.lora.quantization != "none" and not getattr(model, "_ftharness_kbit_prepared", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
        model._ftharness_kbit_prepared = True
    config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=target_module_names(cfg), bias=cfg.lora.bias, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def detach_adapter(model) -> None:
    """Remove the adapter's layers so the cached base is exactly what was loaded."""
    if isinstance(model, PeftModel):
        model.unload()


def count_parameters(model: torch.nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the elements they stand for."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel() * (2 if parameter.__class__.__name__ == "Params4bit" else 1)
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total
