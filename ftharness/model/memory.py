"""How much memory a trial needs, said before the base loads, what to change when it does not fit, and how
much it took (`PeakMemory`).

The estimate adds up, from the model's config alone (the model is built on the meta device: shapes, no
weights):
- the base weights in their dtype, or 4 / 8 bits a weight for the linear layers of a quantized base, whose other
  weights (embeddings, output layer, norms) peft's `prepare_model_for_kbit_training` upcasts to fp32 (counted
  in bf16, the 4-bit deepseek-llm-7b preset's estimate was 0.79x its peak on an H200 at 256 tokens);
- the adapter's weights, gradients and optimizer states (fp32; full fine-tuning: every weight);
- the activations one micro-batch of `per_device_batch_size` rows of `data.max_length` tokens keeps for the
  backward pass, with or without gradient checkpointing (per token and layer ~(18 h + 5 i) floats, measured
  on SmolLM2 with LoRA on every linear layer: 32.3 h; with checkpointing one h a layer plus one layer), and
  under eager attention each layer's heads x length^2 scores;
- the logits of the labelled positions and the loss's fp32 copies (16 bytes per position and vocabulary entry,
  all positions counted: an upper bound);
- on the CPU, the process's own footprint before the first base loaded (Python, torch, libraries), so the
  total compares with the resident-set peak; on a GPU the allocator's peak, which has no such part.
Rows shorter than `data.max_length` need less: the estimate is the worst batch's.
"""

import ctypes
import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import psutil
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from ftharness.model.hardware import Hardware

GB = 1e9
OPTIMIZER_STATE_BYTES = {"adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0, "adafactor": 4}  # per weight; AdamW: 8
QUANTIZED_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1 + 4 / 64}  # the weight plus its block scales (64 weights a block)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGIT_BYTES = 16  # per labelled position and vocabulary entry: the logits, their fp32 copy, log-softmax, its gradient
_process_baseline: Dict[str, int] = {}
_shape_cache: Dict[tuple, tuple] = {}


@dataclass
class MemoryEstimate:
    parts: Dict[str, float]  # bytes: weights, adapter, activations, logits, runtime
    device: str
    free: Optional[float]  # bytes the device has free now (None: unknown)
    without_checkpointing: float  # the activations part if train.gradient_checkpointing were false
    with_checkpointing: float
    fixes: List[str] = field(default_factory=list)  # overrides that would make it fit, when it does not

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.free is None or self.total <= self.free

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GB:.2f}" for name, value in self.parts.items())
        head = (f"memory estimate {self.total / GB:.2f} GB ({parts}; activations "
                f"{self.with_checkpointing / GB:.2f} with / {self.without_checkpointing / GB:.2f} without "
                f"gradient checkpointing)")
        if self.free is None:
            return head
        if self.fits:
            return f"{head}: fits the {self.free / GB:.1f} GB free on {self.device}"
        fix = f"; would fit with {' '.join(self.fixes)}" if self.fixes else "; no setting of these keys makes it fit"
        return (f"{head}: does NOT fit the {self.free / GB:.1f} GB free on {self.device}, "
                f"{(self.total - self.free) / GB:.2f} GB short{fix}")

    def as_dict(self) -> dict:
        return {"total_mb": _mb(self.total), **{f"{k}_mb": _mb(v) for k, v in self.parts.items()},
                "free_mb": _mb(self.free), "fits": self.fits, "fixes": self.fixes}


def _mb(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value / 2**20, 1)


def _shapes(model_config, for_classification: bool) -> Tuple[int, Tuple[Tuple[str, int, int], ...]]:
    """(all weights, (name, in, out) of every linear layer) of the model built on the meta device (once per config)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    key = (model_config.to_json_string(), for_classification)
    if key not in _shape_cache:
        builder = AutoModelForSequenceClassification if for_classification else AutoModelForCausalLM
        with torch.device("meta"):
            model = builder.from_config(model_config)
        linears = tuple((name, m.in_features, m.out_features) for name, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear))
        _shape_cache[key] = (sum(p.numel() for p in model.parameters()), linears)
    return _shape_cache[key]


def _layer_shape(model_config) -> Tuple[int, int, int, int, int]:
    """(hidden size, MLP width, layers, vocabulary, attention heads) of a transformer config, under its common
    names."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    hidden = getattr(text, "hidden_size", None) or text.dim
    width = getattr(text, "intermediate_size", None) or 4 * hidden
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_heads", 1)
    return hidden, width, text.num_hidden_layers, text.vocab_size, heads


def free_memory(device: str) -> float:
    """Bytes free now: the GPU's free memory, or the memory the system can still hand out."""
    if device == "cuda":
        return float(torch.cuda.mem_get_info()[0])
    return float(psutil.virtual_memory().available)


def process_baseline(device: str) -> float:
    """The process's own resident set before the first base loads (CPU; 0 on a GPU), remembered per process."""
    if device == "cuda":
        return 0.0
    return float(_process_baseline.setdefault("rss", psutil.Process(os.getpid()).memory_info().rss))


def estimate_memory(cfg: DictConfig, hw: Hardware, model_config, free: Optional[float] = None,
                    runtime: float = 0.0, base_loaded: bool = False) -> MemoryEstimate:
    """The trial's peak memory on `hw.device` by its parts, compared with `free` bytes.

    `base_loaded`: the base is already in memory (a later trial of a sweep), so `free` does not count it.
    """
    parts, activations = _parts(cfg, hw, model_config, runtime)
    available = None if free is None else free + (parts["weights"] if base_loaded else 0)
    estimate = MemoryEstimate(parts, hw.device, available, activations[False], activations[True])
    if not estimate.fits:
        estimate.fixes = _fixes(cfg, hw, model_config, estimate.free, runtime)
    return estimate


def _parts(cfg: DictConfig, hw: Hardware, model_config, runtime: float):
    total, linears = _shapes(model_config, cfg.task.name == "classification")
    hidden, width, layers, vocab, heads = _layer_shape(model_config)
    weight_bytes = DTYPE_BYTES[hw.model_dtype]
    act_bytes = 2 if hw.precision in ("bf16", "fp16") else 4
    quantized = QUANTIZED_BYTES.get(cfg.lora.quantization)
    output_layers = ("lm_head", "score", "classifier")  # bitsandbytes keeps them unquantized, like embeddings
    quantizable = sum(i * o for name, i, o in linears if name.split(".")[-1] not in output_layers)
    weights = total * weight_bytes if quantized is None else quantizable * quantized + (total - quantizable) * 4
    if cfg.lora.enabled:
        from ftharness.config.validation import target_module_names

        targets = set(target_module_names(cfg))
        trainable = sum(cfg.lora.r * (i + o) for name, i, o in linears if name.split(".")[-1] in targets)
    else:
        trainable = total
    state = OPTIMIZER_STATE_BYTES.get(cfg.optim.name, 8)
    adapter = trainable * (4 + 4 + state) if cfg.lora.enabled else trainable * (4 + state)  # full: weights counted
    tokens = cfg.train.per_device_batch_size * cfg.data.max_length
    per_layer = (6 * hidden * 4 + (12 * hidden + 5 * width) * act_bytes)  # norms in fp32, the rest in compute dtype
    if cfg.lora.enabled and cfg.lora.dropout == 0:
        per_layer -= (6 * hidden + width) * act_bytes  # no dropped copies of each adapted layer's input
    # eager attention keeps a layer's scores (the softmax in fp32 and its compute-dtype copy) for the backward
    scores = tokens * cfg.data.max_length * heads * (4 + act_bytes) if hw.attention == "eager" else 0
    activations = {False: layers * (tokens * per_layer + scores),
                   True: tokens * (layers * hidden * act_bytes + per_layer) + scores}
    logits = tokens * vocab * LOGIT_BYTES if cfg.task.name != "classification" else 0
    parts = {"weights": float(weights), "adapter+optimizer": float(adapter),
             "activations": float(activations[bool(cfg.train.gradient_checkpointing)]), "logits": float(logits)}
    if runtime:
        parts["runtime"] = runtime
    return parts, activations


def halve_micro_batch(micro: int, accum: int) -> Tuple[int, int]:
    """Half the micro-batch and twice the gradient accumulation: the same effective batch in less memory."""
    return micro // 2, accum * 2


def _fixes(cfg: DictConfig, hw: Hardware, model_config, free: float, runtime: float) -> List[str]:
    """Overrides, applied one after another in the order a user would reach for them, up to the first set that
    fits: checkpointing, smaller micro-batches (more accumulation: the same effective batch), a 4-bit base,
    shorter rows."""
    trial = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    changes: Dict[str, object] = {}

    def fits_with(**overrides) -> bool:
        for key, value in overrides.items():
            OmegaConf.update(trial, key, value)
            changes[key] = value
        parts, _ = _parts(trial, hw, model_config, runtime)
        return sum(parts.values()) <= free

    steps = [] if cfg.train.gradient_checkpointing else [{"train.gradient_checkpointing": True}]
    micro, accum = cfg.train.per_device_batch_size, cfg.train.grad_accum_steps
    while micro > 1:
        micro, accum = halve_micro_batch(micro, accum)
        steps.append({"train.per_device_batch_size": micro, "train.grad_accum_steps": accum})
    if cfg.lora.enabled and cfg.lora.quantization == "none":
        steps.append({"lora.quantization": "4bit"})
    length = cfg.data.max_length
    while length > 512:
        length //= 2
        steps.append({"data.max_length": length})
    for step in steps:
        if fits_with(**step):
            return [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                    for key, value in changes.items()]
    return []


def _max_rss() -> int:
    """The process's resident-set high-water mark in bytes (it catches peaks between two samples)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts KiB


def _high_water() -> int:
    """The kernel's resident-set high-water mark of this process (VmHWM), in bytes; 0 where there is none."""
    status = Path("/proc/self/status")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M) if status.exists() else None
    return int(match.group(1)) * 1024 if match else 0


def _release_and_reset_high_water() -> bool:
    """Give malloc's free memory back to the system, then reset the high-water mark to the resident set
    (Linux: `5` into /proc/self/clear_refs); False where that cannot be done."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc: freed heap pages stay resident until trimmed
    except (OSError, AttributeError):  # another C library: its free memory stays counted
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _high_water() > 0


TRAINING_RSS = "cpu_rss_training"  # memory_kind: the resident set's high-water mark over the training steps


class PeakMemory(TrainerCallback):
    """Peak memory of one trial: CUDA's allocator peak on a GPU; on the CPU, the resident set's high-water mark
    over the training steps (TRAINING_RSS).

    The trials of a sweep share one process, whose resident-set peak was set by whichever trial or evaluation
    needed most, so on the CPU the kernel's high-water mark is reset (after malloc returned its free memory)
    when training starts and after each evaluation, and read at the end of each optimizer step: the peak of
    the base weights, the adapter and its optimizer state, and the steps' activations, which grow with the
    batch. Evaluations (batches of eval.batch_size rows) do not count. Where the mark cannot be reset, the
    resident set is sampled at each step's end (`cpu_rss`), which cannot tell a process's trials apart.
    """

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_allocated" if device == "cuda" else (
            TRAINING_RSS if _release_and_reset_high_water() else "cpu_rss")
        self._peak = 0
        self._high_water = _max_rss()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def on_train_begin(self, args, state, control, **kwargs):
        self._reset()

    def on_evaluate(self, args, state, control, **kwargs):
        self._reset()

    def on_step_end(self, args, state, control, **kwargs):
        self.sample()

    def _reset(self) -> None:
        if self.kind == TRAINING_RSS:
            _release_and_reset_high_water()

    def sample(self) -> None:
        if self.device == "cuda":
            current = torch.cuda.max_memory_allocated()
        elif self.kind == TRAINING_RSS:
            current = _high_water()
        else:
            current = psutil.Process(os.getpid()).memory_info().rss
            if _max_rss() > self._high_water:
                current = max(current, _max_rss())  # the process's high-water mark rose during this trial: its peak
        self._peak = max(self._peak, current)

    @property
    def peak_mb(self) -> float:
        if self.kind != TRAINING_RSS or not self._peak:  # the training steps' mark is read at their ends
            self.sample()
        return round(self._peak / 2**20, 1)
