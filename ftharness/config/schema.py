"""The config schema.

The dataclasses below are the typed schema behind `conf/`: Hydra merges every YAML file onto them, so an
unknown key or a value of the wrong type fails at composition. What types cannot check (ranges, choices, a
target module the model lacks, a data file that is not there) `validate` checks next
(ftharness/config/validation.py).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class ModelConfig:
    name_or_path: str = MISSING
    chat_template: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    attention: str = "auto"
    module_sets: Dict[str, List[str]] = field(default_factory=dict)
    linear_modules: List[str] = field(default_factory=list)


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    scaling: str = "standard"
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"
    quantization: str = "none"
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"


@dataclass
class OptimConfig:
    name: str = "adamw_torch"
    lr: float = 2e-4
    scheduler: str = "cosine"
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    loraplus_ratio: Optional[float] = None


@dataclass
class DataConfig:
    name: str = "decimal"
    path: Optional[str] = None
    eval_path: Optional[str] = None
    format: str = "auto"
    columns: Dict[str, str] = field(default_factory=dict)
    role_map: Dict[str, str] = field(default_factory=lambda: {
        "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"})
    label_names: List[str] = field(default_factory=list)
    train_size: Optional[float] = 400
    eval_size: float = 64
    test_size: float = 200
    max_samples: Optional[int] = None
    seed: int = 0
    label_noise: float = 0.0
    strict: bool = False
    system_prompt: Optional[str] = None
    max_length: int = 128
    train_on: str = "all"
    packing: bool = False


@dataclass
class TrainConfig:
    max_steps: int = 50
    epochs: float = 1.0
    per_device_batch_size: int = 8
    grad_accum_steps: int = 1
    eval_steps: int = 10
    eval_per_epoch: bool = False
    group_by_length: bool = False
    logging_steps: int = 1
    gradient_checkpointing: bool = False
    share_prefix: Any = "auto"  # auto | true | false
    compile: Any = "auto"  # auto | true | false
    device: str = "auto"
    precision: str = "auto"
    save_adapter: bool = True
    divergence_factor: float = 10.0
    auto_micro_batch: bool = False


@dataclass
class EvalConfig:
    batch_size: int = 128
    batch_tokens: int = 16384
    max_samples: Optional[int] = 64
    max_tokens: Optional[int] = 32768
    final: str = "subset"
    max_new_tokens: int = 40
    prompts: Optional[List[str]] = None
    num_prompts: int = 3


@dataclass
class TrackerConfig:
    mode: str = "local"
    project: str = MISSING
    log_dir: str = MISSING
    tags: List[str] = field(default_factory=list)


@dataclass
class TaskConfig:
    name: str = "sft"
    beta: float = 0.1


@dataclass
class ObjectiveConfig:
    metric: str = "eval_loss"
    direction: str = "minimize"


@dataclass
class Config:
    name: str = "default"
    seed: int = 42
    cache_dir: str = MISSING
    verbose: bool = False  # true: the Trainer's logs, library notices and Hydra's job lines on the console too
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"  # the Optuna study presets, one YAML file each
CONF_DIR = SWEEPS_DIR.parent / "conf"  # the config groups that `python -m ftharness` composes


def register_schema() -> None:
    """Make the schema available to `conf/config.yaml` as the first entry of its defaults list, and the
    presets in `sweeps/` as its `sweep` group (`-m sweep=<name>`)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for preset in sorted(SWEEPS_DIR.glob("*.yaml")):
        store.store(group="sweep", name=preset.stem, node=OmegaConf.load(preset), package="_global_")
