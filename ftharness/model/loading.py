"""Base models, loaded once per process.

A sweep trains the same base many times, so a worker process loads (and quantizes) its base once and
keeps it: each trial attaches a fresh adapter (ftharness/model/adapters.py) and removes it afterwards, leaving
the base as loaded (`AsLoaded` puts back what the trial's peft and Trainer changed on it). Full fine-tuning changes
the base weights, so that base is dropped after its trial.
"""

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    set_seed,
)

from ftharness.data.templates import resolve_chat_template
from ftharness.model.embedded import resolve_model_path
from ftharness.model.hardware import TORCH_DTYPES, Hardware
from ftharness.model.sdpa_masks import use_sdpa_masks_without_syncs

log = logging.getLogger(__name__)

_loaded: Dict[tuple, Tuple[PreTrainedModel, object, "AsLoaded"]] = {}
HOOK_DICTS = tuple(name for name, value in vars(torch.nn.Module()).items()
                   if "hook" in name and isinstance(value, dict))  # torch's: forward, backward, state-dict hooks


@dataclass
class AsLoaded:
    """What a trial may change on a cached base, recorded when it loads and put back when the trial ends.

    Found on the tiny Llama: a trial with checkpointing left it on (the Trainer enables it and never disables it),
    so the next trial without it recomputed its forward and shared no prefix: 1,849 aten ops a step against 1,266
    on a fresh base. It also left forward hooks on the input embeddings (`enable_input_require_grads`, called by
    the Trainer, by peft's k-bit preparation and by peft on a checkpointing base: one more per call, only the last
    one removable through the model; 3 after two 4-bit trials), every weight frozen by peft and `config.use_cache`
    off (the Trainer's); a trial that failed in training left the base in training mode (and, compiled, its layers'
    compiled call: ftharness/trial/compiled.py). peft's k-bit preparation casts a 4-bit base's 16-bit norms and
    embeddings to fp32; the Trainer aligns the configs' special tokens to the tokenizer's.
    """

    training: Dict[torch.nn.Module, bool]
    parameters: Dict[torch.nn.Parameter, Tuple[bool, torch.dtype]]
    hooks: List[Tuple[dict, frozenset]]
    config: dict
    generation_config: Optional[dict]

    @classmethod
    def of(cls, model: PreTrainedModel) -> "AsLoaded":
        modules = list(model.modules())
        hooks = [getattr(module, name) for module in modules for name in HOOK_DICTS]
        generation = getattr(model, "generation_config", None)
        return cls(training={module: module.training for module in modules},
                   parameters={p: (p.requires_grad, p.dtype) for p in model.parameters()},
                   hooks=[(registered, frozenset(registered)) for registered in hooks],
                   config=model.config.to_dict(), generation_config=generation.to_dict() if generation else None)

    def restore(self, model: PreTrainedModel) -> None:
        if model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
        for hooks, kept in self.hooks:
            for handle in set(hooks) - kept:
                del hooks[handle]
        for module, training in self.training.items():
            module.training = training
            module._compiled_call_impl = None  # a compiled layer left by a trial that failed mid-step
        for parameter, (requires_grad, dtype) in self.parameters.items():
            if parameter.dtype != dtype and type(parameter) is torch.nn.Parameter:  # not 4/8-bit storage, which
                parameter.data = parameter.data.to(dtype)  # bitsandbytes may repack in another dtype on its own
            parameter.requires_grad_(requires_grad)
        model.config.update(_changed(self.config, model.config.to_dict()))
        if self.generation_config is not None:
            model.generation_config.update(**_changed(self.generation_config, model.generation_config.to_dict()))


def _changed(saved: dict, now: dict) -> dict:
    """The saved values of the keys whose values changed (only these are set back: to_dict writes some values, a
    dtype, in another form than the attribute's)."""
    return {key: value for key, value in saved.items() if now.get(key) != value}


def _quantization_config(cfg: DictConfig, hw: Hardware) -> Optional[BitsAndBytesConfig]:
    if cfg.lora.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.lora.quant_type,
                                  bnb_4bit_use_double_quant=cfg.lora.double_quant,
                                  bnb_4bit_compute_dtype=TORCH_DTYPES[hw.compute_dtype])
    if cfg.lora.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _load_tokenizer(path: str, cfg: DictConfig, for_chat: bool):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.chat_template:
        tokenizer.chat_template = resolve_chat_template(cfg.model.chat_template)
    if for_chat and tokenizer.chat_template is None:
        raise ValueError(f"model.name_or_path={cfg.model.name_or_path!r} has no chat template: set model.chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _load_model(path: str, cfg: DictConfig, hw: Hardware, num_labels: Optional[int]) -> PreTrainedModel:
    """A causal LM, or with `num_labels` a sequence classifier whose new head is initialised from the seed."""
    quantization = _quantization_config(cfg, hw)
    options = dict(dtype=TORCH_DTYPES[hw.model_dtype], attn_implementation=hw.attention,
                   quantization_config=quantization, trust_remote_code=cfg.model.trust_remote_code,
                   device_map={"": 0 if hw.device == "cuda" else "cpu"} if quantization else None)
    if num_labels:
        set_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **options)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **options)
    if quantization is None:
        model.to(hw.device)
    elif hw.device == "cpu":
        _compute_as_configured(model)
    return model


def _compute_as_configured(model: PreTrainedModel) -> None:
    """Keep bitsandbytes from repacking a 4-bit base's weights for its bf16 CPU kernel. On CPUs with AVX512-BF16,
    bitsandbytes 0.50 repacks a layer at its first forward in eval mode without gradients (the base's measurement)
    and from then on computes it in bf16, training included, whatever `lora.compute_dtype` says; a state dict
    (saving the adapter) unpacks it again. So the first 4-bit trial of a process trained in bf16 and the later ones
    in fp32: on the tiny Llama, eval loss 4.6118 after 2 steps in the first, 4.5879 in the second."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _base_key(cfg: DictConfig, hw: Hardware, path: str, num_labels: Optional[int]) -> tuple:
    return (path, cfg.model.chat_template, cfg.model.trust_remote_code, cfg.lora.quantization, cfg.lora.quant_type,
            cfg.lora.double_quant, hw, num_labels, cfg.seed if num_labels else None)


def base_is_loaded(cfg: DictConfig, hw: Hardware) -> bool:
    """Whether this process holds this config's base already (its memory is then in use, not free)."""
    path = resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))
    return any(key[:-2] == _base_key(cfg, hw, path, None)[:-2] for key in _loaded)


def read_model_config(cfg: DictConfig):
    """The model's transformers config alone (no weights): what the memory estimate needs before loading."""
    path = resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))
    return AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)


def load_base(cfg: DictConfig, hw: Hardware, cache_dir: Path, num_labels: Optional[int] = None):
    """(model, tokenizer, resolved path) for this config, reused from the last trial when the base is the same.

    `num_labels` asks for a sequence classifier instead of a causal LM; its head is new, so the seed that
    initialised it is part of what makes two bases the same.
    """
    path = resolve_model_path(cfg.model.name_or_path, cache_dir)
    key = _base_key(cfg, hw, path, num_labels)
    use_sdpa_masks_without_syncs()
    if key not in _loaded:
        forget_base()  # one base per process: a sweep over models must not keep them all in memory
        log.info("loading base model %s", path)
        model = _load_model(path, cfg, hw, num_labels)
        _loaded[key] = (model, _load_tokenizer(path, cfg, for_chat=not num_labels), AsLoaded.of(model))
        _freeze_long_lived_objects()
    model, tokenizer, _ = _loaded[key]
    return model, tokenizer, path


def restore_as_loaded(model: PreTrainedModel) -> None:
    """Put back what a trial changed on a cached base (see AsLoaded); another model is left as it is."""
    for cached, _, as_loaded in _loaded.values():
        if cached is model:
            as_loaded.restore(model)


def _freeze_long_lived_objects() -> None:
    """Move the objects alive now (the libraries' and the base's, ~580k: they live as long as the process) out of
    the garbage collector's sight: a full collection, which transformers runs at every Trainer.train, then takes
    ~0 s instead of 0.22 s on a 2-core CPU. Garbage is collected first, so that none of it is kept for good."""
    gc.collect()
    gc.freeze()


def forget_base() -> None:
    """Drop the cached base (after full fine-tuning changed its weights, or for another base), and let the garbage
    collector see what load_base froze again, so that nothing of the dropped base outlives it."""
    _loaded.clear()
    gc.unfreeze()


def load_unquantized_base(cfg: DictConfig, dtype: str, device: str = "cpu") -> PreTrainedModel:
    """A run's base model in 16/32-bit, also when the run trained on a 4-bit base.

    An adapter can only be merged into plain weights (a quantized base cannot take the merged update), so
    merging, and comparing what a merge would give, reload the checkpoint the run's config names unquantized.
    """
    path = resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype],
                                                 trust_remote_code=cfg.model.trust_remote_code)
    return model.to(device)
