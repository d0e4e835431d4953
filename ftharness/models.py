"""Base models and LoRA adapters.

A sweep trains the same base many times, so a worker process loads (and quantizes) its base once and
keeps it: each trial attaches a fresh adapter and removes it afterwards, leaving the base as loaded.
Full fine-tuning changes the base weights, so that base is dropped after its trial.
"""

import gc
import logging
import types
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, \
    BitsAndBytesConfig, PreTrainedModel, set_seed

from ftharness.config import target_module_names
from ftharness.embedded import resolve_model_path
from ftharness.hardware import TORCH_DTYPES, Hardware
from ftharness.templates import resolve_chat_template

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
    return model


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
    if key not in _loaded:
        forget_base()  # one base per process: a sweep over models must not keep them all in memory
        log.info("loading base model %s", path)
        _loaded[key] = (_load_model(path, cfg, hw, num_labels), _load_tokenizer(path, cfg, for_chat=not num_labels))
        _freeze_long_lived_objects()
    model, tokenizer = _loaded[key]
    return model, tokenizer, path


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


class CpuDropout(torch.nn.Dropout):
    """nn.Dropout whose mask comes from 16-bit slices of 64-bit random integers: the same keep probability
    (p rounded to 1/65536) and scaling. torch draws CPU masks one element at a time: its dropout took 16 % of a
    SmolLM2 step on an AMD EPYC; this one is 2.5-3.5x faster there and on an Intel Xeon alike."""

    def kept(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with a share p of its elements zeroed, not yet scaled by 1 / (1 - p)."""
        count = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
        dropped_below = round(self.p * 2**16) - 2**15  # int16 values below this are dropped: a share of p
        return torch.where(bits.view(torch.int16)[:count].view(x.shape) >= dropped_below, x, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return self.kept(x) * (1 / (1 - self.p))


def _use_cpu_dropout(model: torch.nn.Module) -> None:
    """Swap the adapter's dropout modules (peft's `lora_dropout`) for CpuDropout."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                    dropouts[name] = CpuDropout(dropout.p)


def _lean_lora_forward(layer: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's forward of a plain LoRA layer in fewer operations and with one rounding. peft casts every input to
    the adapter's fp32 and the update back, copies that autocast undoes at the adapter's first product; here the
    update runs in the input's dtype under autocast, as peft's products do. In training a CpuDropout mask zeroes
    the input and its 1 / (1 - p) joins the LoRA scaling. The update joins the base's product inside it
    (_base_product_plus), not after the product was rounded: in bf16, peft's order drops updates below half a
    bf16 step of the base's output, so an adapter learns late. Anything else (merged or several adapters,
    variants such as DoRA, quantized bases) takes peft's own forward."""
    names = layer.active_adapters
    plain = not (args or kwargs or layer.disable_adapters or layer.merged or len(names) != 1
                 or names[0] not in layer.lora_A or names[0] in layer.lora_variant
                 or layer.lora_B[names[0]].bias is not None or type(layer.base_layer) is not torch.nn.Linear)
    if not plain:
        return LoraLinear.forward(layer, x, *args, **kwargs)
    name = names[0]
    weight_a, weight_b = layer.lora_A[name].weight, layer.lora_B[name].weight
    dropout, scaling = layer.lora_dropout[name], layer.scaling[name]
    autocast = torch.is_autocast_enabled(x.device.type)
    if not (layer.training or torch.is_grad_enabled()):  # evaluation
        if not autocast:
            weight_a, weight_b = weight_a.to(x.dtype), weight_b.to(x.dtype)
        return _base_product_plus(layer.base_layer, x, F.linear(F.linear(x, weight_a), weight_b), scaling)
    inputs = x
    if isinstance(dropout, CpuDropout) and dropout.training and dropout.p:
        x, scaling = dropout.kept(x), scaling / (1 - dropout.p)
    else:
        x = dropout(x)
    if not autocast:
        x = x.to(weight_a.dtype)  # as peft: the adapter's dtype, without autocast to choose one
    return _base_product_plus(layer.base_layer, inputs, F.linear(F.linear(x, weight_a), weight_b), scaling)


def _base_product_plus(base: torch.nn.Linear, x: torch.Tensor, update: torch.Tensor, scaling: float) -> torch.Tensor:
    """base(x) + scaling * update, the update added before the product is rounded: addmm adds it to the
    product's fp32 accumulator before rounding to bf16. Added after rounding, an update below half a bf16 step of
    the base's output vanishes (a fresh adapter's, at a low learning rate): a 12-step SmolLM2 trial at lr 1e-4
    then ended at eval loss 0.330 on a bf16 base, 0.267 in fp32 and with this. Without a bias it also saves an
    addition."""
    weight = base.weight
    if not torch.is_autocast_enabled(x.device.type) and not x.dtype == update.dtype == weight.dtype:
        result = base(x)  # mixed dtypes without autocast (an fp32 adapter on a half-precision base): peft's sum
        return (result + update * scaling).to(result.dtype)
    flat = torch.addmm(update.reshape(-1, weight.shape[0]), x.reshape(-1, x.shape[-1]), weight.t(), beta=scaling)
    if base.bias is not None:  # after: folded into the addend, a bias larger than the update would round it away
        flat = flat + base.bias
    return flat.view(*x.shape[:-1], weight.shape[0])


def _use_lean_lora_forward(model: torch.nn.Module) -> None:
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_lean_lora_forward, module)


def _train_in_fp32(model: torch.nn.Module) -> None:
    """Upcast what trains on a bf16 base (peft keeps LoRA weights fp32, but copies a classification head in the
    base's dtype), so the optimizer never updates bf16 weights."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def attach_adapter(model: PreTrainedModel, cfg: DictConfig, task_type: str = "CAUSAL_LM") -> PeftModel:
    """A fresh LoRA adapter on the base, initialised from the trial's seed (set by the caller).

    For `SEQ_CLS` peft also trains (a copy of) the classification head, which `detach_adapter` drops again.
    """
    if cfg.lora.quantization != "none" and not getattr(model, "_ftharness_kbit_prepared", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
        model._ftharness_kbit_prepared = True
    config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=target_module_names(cfg), bias=cfg.lora.bias, task_type=task_type)
    adapted = get_peft_model(model, config)
    _use_lean_lora_forward(adapted)
    if model.device.type == "cpu":
        _use_cpu_dropout(adapted)
        _train_in_fp32(adapted)
    return adapted


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


def load_unquantized_base(cfg: DictConfig, dtype: str, device: str = "cpu") -> PreTrainedModel:
    """A run's base model in 16/32-bit, also when the run trained on a 4-bit base.

    An adapter can only be merged into plain weights (a quantized base cannot take the merged update), so
    merging, and comparing what a merge would give, reload the checkpoint the run's config names unquantized.
    """
    path = resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype],
                                                 trust_remote_code=cfg.model.trust_remote_code)
    return model.to(device)


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
