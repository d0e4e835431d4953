"""Config validation: every value a user can get wrong, checked before anything expensive happens.

The schema (ftharness/config/schema.py) fails unknown keys and wrong types at composition; `validate` checks
what types cannot (ranges, choices, a target module the model lacks, a data file that is not there) and
raises a `ConfigError` naming the key, the value and what is allowed, before any model is loaded.
"""

import importlib.util
from pathlib import Path
from typing import Any, List

from omegaconf import DictConfig, ListConfig, OmegaConf

from ftharness.data.formats import FORMATS, TRAIN_ON
from ftharness.data.sources import EMBEDDED_DATA, EMBEDDED_PREFIX, FILE_SUFFIXES, looks_like_hub_id
from ftharness.data.synthetic import SYNTHETIC_DATASETS
from ftharness.data.templates import CHAT_TEMPLATES
from ftharness.model.embedded import EMBEDDED, PREFIX, SHIPPED


class ConfigError(ValueError):
    """An invalid config value, reported as `key=value: what is allowed`."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        shown = _as_yaml(value) if isinstance(value, bool) else repr(value)  # true, 'sometimes', 1.5
        super().__init__(f"{key}={shown} is invalid: {allowed}")


def _as_yaml(value: Any) -> str:
    """A value as a config writes it: true / false for booleans."""
    return str(value).lower() if isinstance(value, bool) else str(value)


DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")  # transformers' attn_implementation names
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OBJECTIVES = {"eval_loss": "minimize", "train_loss": "minimize", "test_accuracy": "maximize", "test_f1": "maximize"}
TASK_NAMES = ("sft", "orpo", "classification")  # ftharness/trial/tasks.py implements each


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _choice(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = OmegaConf.select(cfg, key)
    _require(value in allowed, key, value, f"allowed: {', '.join(map(_as_yaml, allowed))}")


def _in_range(cfg: DictConfig, key: str, low: float, high: float = float("inf"), *, open_low: bool = False,
              open_high: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    bounds = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    _require(above and below, key, value, f"must lie in {bounds}")


def target_module_names(cfg: DictConfig) -> List[str]:
    """Expand `lora.target_modules` (a named set or a list of module names) into module names."""
    sets = {name: list(modules) for name, modules in cfg.model.module_sets.items()}
    sets["all-linear"] = list(cfg.model.linear_modules)
    wanted = cfg.lora.target_modules
    if isinstance(wanted, str):
        if wanted in sets:
            return list(sets[wanted])
        wanted = [wanted]
    names = list(wanted) if isinstance(wanted, (list, ListConfig)) else [wanted]
    known = set(cfg.model.linear_modules)
    for name in names:
        _require(not known or name in known, "lora.target_modules", name,
                 f"a named set ({', '.join(sets)}) or modules of this model: {', '.join(sorted(known))}")
    return names


def _validate_model_path(name_or_path: str) -> None:
    """An embedded name must exist; so must a path that is clearly local (absolute, ./, ../ or ~/)."""
    embedded = [PREFIX + name for name in (*EMBEDDED, *SHIPPED)]
    allowed = f"an embedded model ({', '.join(embedded)}), an existing local folder or a hub id (owner/name)"
    _require(bool(name_or_path), "model.name_or_path", name_or_path, allowed)
    if name_or_path.startswith(PREFIX):
        _require(name_or_path in embedded, "model.name_or_path", name_or_path, allowed)
        return
    folder = Path(name_or_path).expanduser()
    if name_or_path.startswith(("/", "./", "../", "~")):
        _require(folder.is_dir(), "model.name_or_path", name_or_path, allowed)
    if folder.is_dir():
        _require((folder / "config.json").is_file(), "model.name_or_path", name_or_path,
                 "this folder holds no transformers model (no config.json): point at the folder that "
                 "save_pretrained wrote")


def validate(cfg: DictConfig) -> None:
    """Check every value a user can get wrong, before anything expensive happens."""
    _validate_model_path(cfg.model.name_or_path)
    _choice(cfg, "model.dtype", DTYPES)
    _choice(cfg, "model.attention", ATTENTION)
    _require(cfg.model.attention != "flash_attention_2" or importlib.util.find_spec("flash_attn") is not None,
             "model.attention", cfg.model.attention,
             "flash_attention_2 needs the flash-attn package (and a GPU); or auto, sdpa, eager")
    template = cfg.model.chat_template
    _require(template is None or template in CHAT_TEMPLATES or "{{" in template, "model.chat_template", template,
             f"null (the tokenizer's own), a named template ({', '.join(CHAT_TEMPLATES)}) or Jinja text")
    _in_range(cfg, "lora.r", 1)
    _in_range(cfg, "lora.alpha", 0, open_low=True)
    _choice(cfg, "lora.scaling", ("standard", "rslora"))
    _in_range(cfg, "lora.dropout", 0, 1, open_high=True)
    _choice(cfg, "lora.bias", ("none", "all", "lora_only"))
    _choice(cfg, "lora.quantization", ("none", "4bit", "8bit"))
    _choice(cfg, "lora.quant_type", ("nf4", "fp4"))
    _choice(cfg, "lora.compute_dtype", DTYPES)
    _require(cfg.lora.enabled or cfg.lora.quantization == "none", "lora.quantization", cfg.lora.quantization,
             "a quantized base cannot be fully fine-tuned: use `none` with lora.enabled=false")
    if cfg.lora.enabled:
        target_module_names(cfg)
    _choice(cfg, "optim.name", OPTIMIZERS)
    _in_range(cfg, "optim.lr", 0, 10, open_low=True)
    _choice(cfg, "optim.scheduler", SCHEDULERS)
    _in_range(cfg, "optim.warmup", 0)
    _in_range(cfg, "optim.weight_decay", 0)
    _in_range(cfg, "optim.max_grad_norm", 0)
    ratio = cfg.optim.loraplus_ratio
    _require(ratio is None or (ratio >= 1 and cfg.lora.enabled), "optim.loraplus_ratio", ratio,
             "null (one learning rate), or 1 or more (B's lr = ratio x A's) with LoRA (lora.enabled=true)")
    _validate_data(cfg)
    _require(cfg.train.max_steps == -1 or cfg.train.max_steps >= 1, "train.max_steps", cfg.train.max_steps,
             "a positive number of optimizer steps, or -1 to train for train.epochs")
    _in_range(cfg, "train.epochs", 0, open_low=True)
    _in_range(cfg, "train.per_device_batch_size", 1)
    _in_range(cfg, "train.grad_accum_steps", 1)
    _in_range(cfg, "train.eval_steps", 0)
    _in_range(cfg, "train.logging_steps", 1)
    _in_range(cfg, "train.divergence_factor", 0)
    _choice(cfg, "train.device", ("auto", "cpu", "cuda"))
    _choice(cfg, "train.precision", ("auto", "fp32", "bf16", "fp16"))
    _choice(cfg, "train.share_prefix", ("auto", True, False))
    _choice(cfg, "train.compile", ("auto", True, False))
    _in_range(cfg, "eval.batch_size", 1)
    _in_range(cfg, "eval.batch_tokens", 1)
    _require(cfg.eval.max_samples is None or cfg.eval.max_samples >= 1, "eval.max_samples", cfg.eval.max_samples,
             "null (the whole eval split) or a positive count")
    _require(cfg.eval.max_tokens is None or cfg.eval.max_tokens >= 1, "eval.max_tokens", cfg.eval.max_tokens,
             "null (no token bound) or a positive count")
    _choice(cfg, "eval.final", ("subset", "full"))
    _in_range(cfg, "eval.num_prompts", 0)
    _in_range(cfg, "eval.max_new_tokens", 0)
    _choice(cfg, "tracker.mode", ("local", "offline", "cloud", "disabled"))
    _choice(cfg, "task.name", TASK_NAMES)
    _in_range(cfg, "task.beta", 0, open_low=True)
    _choice(cfg, "objective.metric", tuple(OBJECTIVES))
    _choice(cfg, "objective.direction", ("minimize", "maximize"))


def _validate_data(cfg: DictConfig) -> None:
    data = cfg.data
    if data.path is None:
        _require(data.train_size is not None, "data.path", None,
                 "your data file, folder or hub dataset id (this data preset has no synthetic split sizes)")
        _choice(cfg, "data.name", tuple(SYNTHETIC_DATASETS))
        for split in ("train_size", "eval_size", "test_size"):
            value = data[split]
            _require(value is not None and float(value).is_integer() and value >= (split != "test_size"),
                     f"data.{split}", value, "a whole number of rows for the synthetic task (test_size may be 0)")
    else:
        embedded = [EMBEDDED_PREFIX + name for name in EMBEDDED_DATA]
        for key in ("path", "eval_path"):
            value = data[key]
            _require(value is None or Path(value).exists() or looks_like_hub_id(value) or value in embedded,
                     f"data.{key}", value, f"an existing file ({', '.join(FILE_SUFFIXES)}), a folder of them, a hub "
                     f"dataset id or embedded data ({', '.join(embedded)})")
            _require(value is None or not Path(value).is_file() or Path(value).suffix in FILE_SUFFIXES,
                     f"data.{key}", value, f"a file ending in {', '.join(FILE_SUFFIXES)}")
        _require(data.train_size is None or data.train_size > 0, "data.train_size", data.train_size,
                 "null (the rows left), a count >= 1 or a share in (0, 1)")
        for split in ("eval_size", "test_size"):
            _in_range(cfg, f"data.{split}", 0)
    _in_range(cfg, "data.label_noise", 0, 1, open_high=True)
    _choice(cfg, "data.format", ("auto", *FORMATS))
    _require(data.max_samples is None or data.max_samples >= 1, "data.max_samples", data.max_samples,
             "null (every row) or a positive count")
    _choice(cfg, "data.train_on", TRAIN_ON)
    _in_range(cfg, "data.max_length", 8)
    _require(set(data.role_map.values()) <= {"system", "user", "assistant"}, "data.role_map",
             dict(data.role_map), "values among system, user, assistant")
    if cfg.objective.metric in ("test_accuracy", "test_f1"):
        _require(data.test_size > 0 and (data.path is None or cfg.task.name != "sft"), "objective.metric",
                 cfg.objective.metric, "test metrics need data.test_size > 0 and, for sft, the synthetic task "
                 "(its rows carry answer candidates)")
