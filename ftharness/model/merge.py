"""Fold a finished run's LoRA adapter into its base and save a standalone model (`python -m ftharness.merge`).

The result (safetensors weights, tokenizer, chat template) loads with transformers' `AutoModelForCausalLM`
alone, without peft. The base is reloaded unquantized (16/32-bit) first, also for a QLoRA run: a 4-bit base
cannot take the merged weights. The run's own `config.yaml` names the base and the chat template.
"""

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from ftharness.contract import Status, TrialSummary
from ftharness.model.hardware import PRECISION_DTYPES


class RunDirError(ValueError):
    """A directory that holds no finished run with a LoRA adapter; the message says why, in one line."""


@dataclass(frozen=True)
class AdapterRun:
    """A finished run directory whose LoRA adapter was saved."""

    path: Path
    cfg: DictConfig
    summary: TrialSummary

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def name(self) -> str:
        return self.summary.run_name or self.path.name

    @property
    def base_dtype(self) -> str:
        """The dtype the run loaded its base in (for a 4-bit base: the dtype of its unquantized layers); runs
        written before summaries recorded it loaded it in their precision's dtype."""
        return self.summary.model_dtype or PRECISION_DTYPES[self.summary.precision]

    @property
    def quantized(self) -> bool:
        return self.cfg.lora.quantization != "none"


def read_adapter_run(run_dir: Path) -> AdapterRun:
    """The run in `run_dir`, or a `RunDirError` when it is not finished or has no adapter to apply."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such directory")
    summary = TrialSummary.read(run_dir)
    if not ((run_dir / "config.yaml").is_file() and summary is not None):
        raise RunDirError(f"{run_dir} is not an ftharness run directory (no config.yaml and summary.json in it)")
    if summary.status != Status.COMPLETED:
        reason = summary.error or "it did not complete"
        raise RunDirError(f"{run_dir} is not a finished run (status {summary.status}: {reason})")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if not cfg.lora.enabled:
        raise RunDirError(f"{run_dir} is a full fine-tuning run: it has no adapter; its model/ folder is already "
                          "a standalone model (AutoModelForCausalLM.from_pretrained)")
    if cfg.task.name == "classification":
        raise RunDirError(f"{run_dir} is a classification run: merge and compare handle causal LMs only")
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise RunDirError(f"{run_dir} saved no adapter (train.save_adapter=false): nothing to apply")
    return AdapterRun(run_dir, cfg, summary)


def merge_run(run: AdapterRun, output: Path, dtype: str) -> Path:
    """Reload the run's base unquantized in `dtype`, merge its adapter in, save model and tokenizer to `output`."""
    # Imported here: peft and bitsandbytes print a notice when imported, and error messages should stay one line.
    from ftharness.model.adapters import load_adapted_base

    merged = load_adapted_base(run.cfg, run.adapter_dir, dtype).merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    # The adapter folder holds the run's tokenizer as it trained: its chat template and pad token included.
    tokenizer = AutoTokenizer.from_pretrained(run.adapter_dir, trust_remote_code=run.cfg.model.trust_remote_code)
    tokenizer.save_pretrained(output)
    return output
