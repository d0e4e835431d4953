"""Device, precision, dtypes and attention: chosen from the hardware unless the config says otherwise."""

import platform
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32", "bf16" or "fp16": the Trainer's mixed precision
    model_dtype: str  # the dtype the base weights load in
    compute_dtype: str  # the dtype 4/8-bit layers compute in
    attention: str  # transformers' attn_implementation


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that make bf16 matrix products fast on a CPU


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512_BF16 or AMX): there bf16 autocast trains
    ~2x (AVX512_BF16) to ~6x (AMX) faster than fp32; elsewhere bf16 is emulated and slower than fp32."""
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(flag, False) for flag in CPU_BF16_FLAGS)


def _auto_precision(device: str) -> str:
    if device == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _auto_model_dtype(cfg: DictConfig, device: str, precision: str) -> str:
    """The base weights' dtype under `model.dtype=auto`: the precision's on a GPU. On the CPU fp32, except a
    frozen base (LoRA on unquantized weights) under bf16 autocast: loaded in bf16, autocast need not cast each
    weight again at every product (it caches casts only of weights that train); the adapter, which peft keeps
    in fp32, and its optimizer state stay fp32."""
    if device != "cpu":
        return PRECISION_DTYPES[precision]
    frozen_base = cfg.lora.enabled and cfg.lora.quantization == "none"
    return "bfloat16" if precision == "bf16" and frozen_base else "float32"


EAGER_ATTENTION_MAX_LENGTH = 128  # rows up to this long: eager attention beats torch's CPU flash kernel in bf16


def _auto_attention(cfg: DictConfig, device: str, precision: str) -> str:
    """sdpa, except for short rows on the CPU under bf16: there torch's flash-attention backward is slow (fwd+bwd
    of 8 rows x 64 tokens, SmolLM2's heads: 6.9 ms against eager attention's 3.0; 15.0 vs 9.0 at 128 tokens; 10.7
    vs 18.3 at 256, 4 rows), and a SmolLM2 step on the embedded task takes 14 % less time with eager attention.
    Eager attention keeps each layer's scores (heads x length^2 a row) for the backward: fine for short rows only."""
    short = cfg.data.max_length <= EAGER_ATTENTION_MAX_LENGTH
    return "eager" if device == "cpu" and precision == "bf16" and short else "sdpa"


def resolve_hardware(cfg: DictConfig) -> Hardware:
    """bf16 on GPUs that support it, fp16 on older GPUs; on the CPU bf16 autocast where the CPU has bf16
    instructions, else fp32. `auto` dtypes follow that choice (see _auto_model_dtype for the CPU's base
    weights); 4/8-bit layers compute in fp32 on the CPU; `auto` attention is sdpa but for short rows on the CPU
    under bf16 (_auto_attention)."""
    device = cfg.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = cfg.train.precision
    if precision == "auto":
        precision = _auto_precision(device)
    model_dtype = _auto_model_dtype(cfg, device, precision) if cfg.model.dtype == "auto" else cfg.model.dtype
    auto_compute = "float32" if device == "cpu" else PRECISION_DTYPES[precision]
    compute_dtype = auto_compute if cfg.lora.compute_dtype == "auto" else cfg.lora.compute_dtype
    attention = _auto_attention(cfg, device, precision) if cfg.model.attention == "auto" else cfg.model.attention
    return Hardware(device, precision, model_dtype, compute_dtype, attention)


def device_name(device: str) -> str:
    """The GPU's or the CPU's model name: a study's wall times compare only between runs on the same one."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    return match.group(1).strip() if match else platform.processor() or "unknown CPU"
