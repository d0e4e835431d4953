"""One fine-tuning trial, from a validated config to a run directory with its results.

The recipe, the same for every task (tasks.py supplies the datasets, trainer and scores that differ):
load data and base model -> measure the base -> attach a fresh adapter -> train -> measure again -> save
the adapter and `summary.json`. It returns the summary; `summary["objective"]["value"]` is
what a sweep optimizes. A callback may stop training early (diverged, or pruned by a study): the summary's
status and `stop_reason` say so, and the after-training measurements are skipped.
"""

import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Sequence

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback, set_seed

from ftharness.data import Splits, load_splits
from ftharness.hardware import PeakMemory, resolve_hardware
from ftharness.models import attach_adapter, count_parameters, detach_adapter, forget_base, load_base
from ftharness.tasks import TASKS, Task
from ftharness.tracking import Tracker
from ftharness.training import DivergenceGuard, MetricsRecorder, final_eval

log = logging.getLogger(__name__)

_base_results: Dict[str, dict] = {}  # base-model scores and answers, per process: the same for every trial
TRACKER_STATES = {"completed": "success", "pruned": "aborted", "diverged": "crashed"}  # SwanLab run end states


def _measure_base(task: Task, model, tokenizer, cfg: DictConfig, splits: Splits, model_path: str) -> dict:
    new_head = task.model_kind != "causal-lm"  # a new head is initialised from the seed
    key = json.dumps([task.name, model_path, OmegaConf.to_container(cfg.data), OmegaConf.to_container(cfg.eval),
                      cfg.lora.quantization, cfg.model.chat_template, cfg.seed if new_head else None])
    if key not in _base_results:
        _base_results[key] = task.measure(cfg, model, tokenizer, splits)
    return _base_results[key]


def _scores(measured: dict) -> dict:
    return {k: v for k, v in measured.items() if k != "answers"}


def _num_labels(cfg: DictConfig, splits: Splits) -> int:
    return len(cfg.data.label_names) or max(row["label"] for row in splits.train + splits.eval) + 1


def _write_answers(run_dir: Path, prompts: List[str], before: List[str], after: List[str]) -> None:
    rows = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after)]
    (run_dir / "generations.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    cell = lambda text: text.replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = ["| prompt | before | after |", "|---|---|---|"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['before'])} | {cell(r['after'])} |" for r in rows]
    (run_dir / "generations.md").write_text("\n".join(lines) + "\n")


def _objective(cfg: DictConfig, after: dict, final_train: dict) -> float:
    value = {**after, "train_loss": final_train.get("loss")}.get(cfg.objective.metric)
    return float("nan") if value is None else float(value)


def run_trial(cfg: DictConfig, run_dir: Path, run_name: str, params: Dict[str, str],
              extra_callbacks: Sequence[TrainerCallback] = (), extra_tags: Sequence[str] = ()) -> dict:
    """Train one adapter as `cfg` says and write metrics.jsonl, summary.json, generations and the adapter.

    `extra_callbacks` may stop training (they expose `status` / `reason`, see DivergenceGuard); a sweep
    passes its pruning callback and tags for the tracker this way.
    """
    started = time.perf_counter()
    hw = resolve_hardware(cfg)
    cache_dir = Path(cfg.cache_dir)
    task = TASKS[cfg.task.name]
    splits = load_splits(cfg.data)
    task.check(splits)
    num_labels = _num_labels(cfg, splits) if task.model_kind == "sequence-classification" else None
    model, tokenizer, model_path = load_base(cfg, hw, cache_dir, num_labels)
    train_set, eval_set = task.datasets(cfg, tokenizer, splits, cache_dir, model_path)
    memory = PeakMemory(hw.device)
    base = _measure_base(task, model, tokenizer, cfg, splits, model_path)

    set_seed(cfg.seed)
    trained = attach_adapter(model, cfg, task.peft_task_type) if cfg.lora.enabled else model
    tracker = Tracker(cfg, run_name, OmegaConf.to_container(cfg, resolve=True), list(extra_tags))
    recorder = MetricsRecorder(run_dir / "metrics.jsonl", tracker, memory)
    stoppers = [DivergenceGuard(cfg.train.divergence_factor), *extra_callbacks]
    try:
        trainer = task.trainer(cfg, hw, trained, tokenizer, train_set, eval_set, run_dir, [recorder, *stoppers])
        eval_before = trainer.evaluate()  # logged at step 0: the base's eval loss (a fresh adapter is a no-op)
        train_started = time.perf_counter()
        trainer.train()
        train_time = time.perf_counter() - train_started
        eval_after = final_eval(trainer, recorder)
        stopped = next((c for c in stoppers if getattr(c, "status", None)), None)
        after = task.measure(cfg, trained, tokenizer, splits) if stopped is None else {}
        tracker.log({**{f"test/{k}_before": v for k, v in _scores(base).items()},
                     **{f"test/{k}": v for k, v in _scores(after).items()}}, trainer.state.global_step)
        saved = _save_weights(cfg, trained, tokenizer, run_dir)
        trainable, total = count_parameters(trained)
        summary = {
            "status": stopped.status if stopped else "completed",
            "stop_reason": stopped.reason if stopped else None,
            "run_name": run_name,
            "params": params,
            "objective": {"metric": cfg.objective.metric, "direction": cfg.objective.direction,
                          "value": _objective(cfg, {**_scores(after), "eval_loss": eval_after.get("loss")},
                                              recorder.last_train)},
            "before": {"eval_loss": eval_before.get("eval_loss"), **_scores(base)},
            "after": {"eval_loss": eval_after.get("loss"), **_scores(after)},
            "final_loss": recorder.last_train.get("loss"),
            "final_grad_norm": recorder.last_train.get("grad_norm"),
            "data": {**splits.stats(),  # rows whose replies do not fit data.max_length are dropped, and counted
                     "dropped_no_reply": len(splits.train) + len(splits.eval) - len(train_set) - len(eval_set)},
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
            "model_dtype": hw.model_dtype,
            "model_path": model_path,
            "weights_dir": str(saved) if saved else None,
        }
        if stopped is None and cfg.eval.prompts:
            _write_answers(run_dir, list(cfg.eval.prompts), base["answers"], after["answers"])
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.finish(TRACKER_STATES[summary["status"]], error=summary["stop_reason"])
        return summary
    except BaseException as error:
        tracker.finish("crashed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        if _base_left_untouched(cfg, task):
            detach_adapter(trained)
        else:
            forget_base()


def _base_left_untouched(cfg: DictConfig, task: Task) -> bool:
    """Whether removing the adapter restores the base: not when base weights (full fine-tuning, biases) or a
    classification head (peft's unload keeps the trained copy) were trained."""
    return cfg.lora.enabled and cfg.lora.bias == "none" and task.model_kind == "causal-lm"


def _save_weights(cfg: DictConfig, trained, tokenizer, run_dir: Path):
    if not cfg.train.save_adapter:
        return None
    target = run_dir / ("adapter" if cfg.lora.enabled else "model")
    trained.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
