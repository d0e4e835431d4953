"""One fine-tuning trial, from a validated config to a run directory with its results.

The recipe: load data and base model -> measure the base -> attach a fresh adapter -> train -> measure
again -> save the adapter and `summary.json`. It returns the summary; `summary["objective"]["value"]` is
what a sweep optimizes.
"""

import json
import logging
import time
from pathlib import Path
from typing import Dict, List

from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from ftharness.data import Splits, load_splits, tokenize_rows
from ftharness.evaluation import candidate_accuracy, greedy_answers
from ftharness.hardware import PeakMemory, resolve_hardware
from ftharness.models import attach_adapter, count_parameters, detach_adapter, forget_base, load_base
from ftharness.tracking import Tracker
from ftharness.training import MetricsRecorder, build_trainer, final_eval

log = logging.getLogger(__name__)

_base_results: Dict[str, dict] = {}  # base-model accuracy and answers, per process: the same for every trial


def _measure(model, tokenizer, cfg: DictConfig, splits: Splits) -> dict:
    """Test accuracy (when the rows carry candidates) and greedy answers to the fixed prompts."""
    result = {"answers": greedy_answers(model, tokenizer, list(cfg.eval.prompts), cfg.eval.max_new_tokens,
                                        cfg.data.system_prompt)}
    if splits.test and "candidates" in splits.test[0]:
        result["test_accuracy"] = candidate_accuracy(model, tokenizer, splits.test, cfg.data.max_length,
                                                     cfg.eval.batch_size)
    return result


def _measure_base(model, tokenizer, cfg: DictConfig, splits: Splits, model_path: str) -> dict:
    key = json.dumps([model_path, OmegaConf.to_container(cfg.data), OmegaConf.to_container(cfg.eval),
                      cfg.lora.quantization, cfg.model.chat_template])
    if key not in _base_results:
        _base_results[key] = _measure(model, tokenizer, cfg, splits)
    return _base_results[key]


def _write_answers(run_dir: Path, prompts: List[str], before: List[str], after: List[str]) -> None:
    rows = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after)]
    (run_dir / "generations.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    cell = lambda text: text.replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = ["| prompt | before | after |", "|---|---|---|"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['before'])} | {cell(r['after'])} |" for r in rows]
    (run_dir / "generations.md").write_text("\n".join(lines) + "\n")


def _objective(cfg: DictConfig, after: dict, final_train: dict) -> float:
    values = {"eval_loss": after.get("eval_loss"), "test_accuracy": after.get("test_accuracy"),
              "train_loss": final_train.get("loss")}
    value = values[cfg.objective.metric]
    return float("nan") if value is None else float(value)


def run_trial(cfg: DictConfig, run_dir: Path, run_name: str, params: Dict[str, str]) -> dict:
    """Train one adapter as `cfg` says and write metrics.jsonl, summary.json, generations and the adapter."""
    started = time.perf_counter()
    hw = resolve_hardware(cfg)
    cache_dir = Path(cfg.cache_dir)
    splits = load_splits(cfg)
    model, tokenizer, model_path = load_base(cfg, hw, cache_dir)
    train_set = tokenize_rows(tokenizer, splits.train, cfg.data.max_length, cache_dir, model_path)
    eval_set = tokenize_rows(tokenizer, splits.eval, cfg.data.max_length, cache_dir, model_path)
    memory = PeakMemory(hw.device)
    base = _measure_base(model, tokenizer, cfg, splits, model_path)

    set_seed(cfg.seed)
    trained = attach_adapter(model, cfg) if cfg.lora.enabled else model
    tracker = Tracker(cfg, run_name, OmegaConf.to_container(cfg, resolve=True))
    recorder = MetricsRecorder(run_dir / "metrics.jsonl", tracker, memory)
    try:
        trainer = build_trainer(cfg, hw, trained, tokenizer, train_set, eval_set, run_dir, recorder)
        eval_before = trainer.evaluate()  # logged at step 0: the base's eval loss (a fresh adapter is a no-op)
        train_started = time.perf_counter()
        trainer.train()
        train_time = time.perf_counter() - train_started
        eval_after = final_eval(trainer, recorder)
        after = _measure(trained, tokenizer, cfg, splits)
        tracker.log({f"test/{k}": v for k, v in (("accuracy_before", base.get("test_accuracy")),
                                                   ("accuracy", after.get("test_accuracy")))}, trainer.state.global_step)
        saved = _save_weights(cfg, trained, tokenizer, run_dir)
        trainable, total = count_parameters(trained)
        summary = {
            "status": "completed",
            "run_name": run_name,
            "params": params,
            "objective": {"metric": cfg.objective.metric, "direction": cfg.objective.direction,
                          "value": _objective(cfg, {**after, "eval_loss": eval_after.get("loss")},
                                              recorder.last_train)},
            "before": {"eval_loss": eval_before.get("eval_loss"), "test_accuracy": base.get("test_accuracy")},
            "after": {"eval_loss": eval_after.get("loss"), "test_accuracy": after.get("test_accuracy")},
            "final_loss": recorder.last_train.get("loss"),
            "final_grad_norm": recorder.last_train.get("grad_norm"),
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "train_tokens_per_s": round(trainer.state.num_input_tokens_seen / train_time, 1),
            "train_time_s": round(train_time, 2),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "peak_memory_mb": memory.peak_mb,
            "memory_kind": memory.kind,
            "trainable_params": trainable,
            "total_params": total,
            "device": hw.device,
            "precision": hw.precision,
            "model_path": model_path,
            "weights_dir": str(saved) if saved else None,
        }
        _write_answers(run_dir, list(cfg.eval.prompts), base["answers"], after["answers"])
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.finish("success")
        return summary
    except BaseException as error:
        tracker.finish("crashed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        if cfg.lora.enabled and cfg.lora.bias == "none":
            detach_adapter(trained)
        else:
            forget_base()  # the base's own weights were trained


def _save_weights(cfg: DictConfig, trained, tokenizer, run_dir: Path):
    if not cfg.train.save_adapter:
        return None
    target = run_dir / ("adapter" if cfg.lora.enabled else "model")
    trained.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
