"""One fine-tuning trial, from a validated config to a run directory with its results.

The recipe, the same for every task (ftharness/trial/tasks.py supplies the datasets, trainer and scores that
differ): load data and base model -> measure the base -> attach a fresh adapter -> train -> measure again -> save
the adapter and `summary.json` (ftharness/contract.py `TrialSummary`). It returns the summary; its objective's
value is what a sweep optimizes. A callback may stop training early (diverged, or pruned by a study): the summary's
status and `stop_reason` say so, and the after-training measurements are skipped.
"""

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import Trainer, TrainerCallback, set_seed

from ftharness.contract import METRICS_FILE, Objective, Status, TrialSummary
from ftharness.data.splits import Splits, load_splits
from ftharness.model.adapters import attach_adapter, count_parameters, detach_adapter
from ftharness.model.hardware import Hardware, device_name, resolve_hardware
from ftharness.model.loading import base_is_loaded, forget_base, load_base, read_model_config
from ftharness.model.memory import (
    MemoryEstimate,
    PeakMemory,
    estimate_memory,
    free_memory,
    halve_micro_batch,
    process_baseline,
)
from ftharness.trial.callbacks import DivergenceGuard, MetricsRecorder
from ftharness.trial.compiled import CompiledSteps
from ftharness.trial.evaluation import before_after_prompts
from ftharness.trial.tasks import TASKS, Task
from ftharness.trial.trainer import EvaluationClock, final_eval, use_console, use_loraplus
from ftharness.ui.formatting import markdown_table
from ftharness.ui.tracking import Tracker

log = logging.getLogger(__name__)

_base_results: Dict[str, dict] = {}  # the base's scores, answers and eval losses, per process: the same every trial
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)  # CUDA's allocator / the CPU's


def _base_key(task: Task, cfg: DictConfig, hw: Hardware, model_path: str, what: str) -> str:
    """What makes two trials' base measurements the same: model, data, eval settings, the precision and attention
    they run in (a sweep over `train.precision` measures the base in each), and a new head's seed."""
    new_head = task.model_kind != "causal-lm"  # a new head is initialised from the seed
    return json.dumps([what, task.name, model_path, OmegaConf.to_container(cfg.data),
                       OmegaConf.to_container(cfg.eval), cfg.lora.quantization, cfg.model.chat_template,
                       dataclasses.astuple(hw), cfg.train.share_prefix, cfg.seed if new_head else None])


def _measure_base(task: Task, model, tokenizer, cfg: DictConfig, hw: Hardware, splits: Splits,
                  model_path: str) -> dict:
    key = _base_key(task, cfg, hw, model_path, "scores")
    if key not in _base_results:
        _base_results[key] = task.measure(cfg, model, tokenizer, splits)
    return _base_results[key]


def _base_eval(trainer: Trainer, key: str, eval_set=None, prefix: str = "eval") -> dict:
    """The base's eval metrics, computed by the first trial of a process (a fresh adapter changes nothing)
    and replayed to the later trials' callbacks, so each trial's metrics.jsonl and curves still start at step 0."""
    if key not in _base_results:
        rows = len(eval_set if eval_set is not None else trainer.eval_dataset)
        log.info("base model: eval loss on %d rows (once per process; later trials reuse it)", rows)
        _base_results[key] = trainer.evaluate(eval_set, metric_key_prefix=prefix)
        return _base_results[key]
    metrics = dict(_base_results[key])
    torch.empty((), dtype=torch.int64).random_()  # the one draw an evaluation's data loader makes: training then
    # draws the same numbers (dropout, order) as in the trial that evaluated, whichever trial of the process this is
    trainer.log(dict(metrics))
    trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, metrics)
    return metrics


def evaluation_sets(cfg: DictConfig, eval_set) -> Tuple[object, object]:
    """(the periodic evaluations' rows, the final evaluation's): the pruner's evidence is a fixed subset
    (`eval.max_samples`, `eval.max_tokens`), the final evaluation that subset or, with `eval.final=full`, all."""
    periodic = _eval_subset(eval_set, cfg.eval.max_samples, cfg.eval.max_tokens)
    return periodic, eval_set if cfg.eval.final == "full" else periodic


def _eval_subset(eval_set, max_samples: Optional[int], max_tokens: Optional[int]):
    """The first rows of the (shuffled) eval split, at most `max_samples` of them and `max_tokens` tokens in all
    (long dialogues make fewer rows)."""
    lengths = [len(ids) for ids in eval_set["input_ids"]] if "input_ids" in eval_set.column_names else []
    count = len(eval_set) if max_samples is None else min(max_samples, len(eval_set))
    if max_tokens is not None and lengths:
        total, rows = 0, 0
        while rows < count and (rows == 0 or total + lengths[rows] <= max_tokens):
            total, rows = total + lengths[rows], rows + 1
        count = rows
    return eval_set if count == len(eval_set) else eval_set.select(range(count))


def _scores(measured: dict) -> dict:
    return {k: v for k, v in measured.items() if k != "answers"}


def _num_labels(cfg: DictConfig, splits: Splits) -> int:
    return len(cfg.data.label_names) or max(row["label"] for row in splits.train + splits.eval) + 1


def _write_answers(run_dir: Path, prompts: List[dict], before: List[str], after: List[str]) -> None:
    """generations.json / .md: prompt | reference (the data's own reply, for held-out dialogues) | before | after."""
    rows = []
    for prompt, answer_before, answer_after in zip(prompts, before, after):
        system = next((m["content"] for m in prompt["messages"] if m["role"] == "system"), None)
        rows.append({"prompt": prompt["prompt"], **({"system": system} if system else {}),
                     **({"reference": prompt["reference"]} if prompt["reference"] is not None else {}),
                     "before": answer_before, "after": answer_after})
    (run_dir / "generations.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    columns = ["prompt", "reference", "before", "after"] if any("reference" in r for r in rows) else \
        ["prompt", "before", "after"]
    (run_dir / "generations.md").write_text(markdown_table(rows, columns, line_break="<br>"))


def run_trial(cfg: DictConfig, run_dir: Path, run_name: str, params: Dict[str, str],
              extra_callbacks: Sequence[TrainerCallback] = (), extra_tags: Sequence[str] = ()) -> TrialSummary:
    """Train one adapter as `cfg` says and write metrics.jsonl, summary.json, generations and the adapter.

    `extra_callbacks` may stop training (they expose `status` / `reason`, see DivergenceGuard); a sweep
    passes its pruning callback and tags for the tracker this way. Running out of memory is a result, status
    `oom`; with `train.auto_micro_batch` the trial is retried at half the micro-batch and twice the
    accumulation (the same effective batch) until it fits or the micro-batch is 1.
    """
    started = time.perf_counter()
    hw = resolve_hardware(cfg)
    splits = load_splits(cfg.data)
    TASKS[cfg.task.name].check(splits)
    prompts = before_after_prompts(cfg, splits)  # a too small eval split fails here, before the model loads
    retries: List[str] = []
    while True:
        estimate = None
        try:
            estimate = _announce_estimate(cfg, hw)
            summary = _attempt(cfg, hw, splits, prompts, estimate, run_dir, run_name, params, extra_callbacks,
                               extra_tags)
            break
        except OUT_OF_MEMORY as error:
            reason = _oom_reason(cfg, error, estimate)
        _release_memory(hw)  # here, not in the except block: its traceback holds the trainer's tensors until it ends
        if not (cfg.train.auto_micro_batch and cfg.train.per_device_batch_size > 1):
            summary = _oom_summary(cfg, run_name, params, reason, estimate, retries)
            break
        cfg = _halve_micro_batch(cfg)
        retries.append(f"{reason}: retried at micro-batch {cfg.train.per_device_batch_size} x accumulation "
                       f"{cfg.train.grad_accum_steps}")
        log.warning("%s", retries[-1])
        (run_dir / METRICS_FILE).unlink(missing_ok=True)  # the curves restart with the retry
    summary.micro_batch = {"per_device_batch_size": cfg.train.per_device_batch_size,
                           "grad_accum_steps": cfg.train.grad_accum_steps, "auto_retries": retries}
    summary.wall_time_s = round(time.perf_counter() - started, 2)
    summary.write(run_dir)
    return summary


def _announce_estimate(cfg: DictConfig, hw: Hardware) -> Optional[MemoryEstimate]:
    """Log the memory estimate (a warning when it does not fit) before the base loads; None when the model's
    config cannot be read (a hub id offline: loading will say why)."""
    runtime = process_baseline(hw.device)
    try:
        model_config = read_model_config(cfg)
    except (OSError, ValueError) as error:
        log.info("no memory estimate: %s", error)
        return None
    estimate = estimate_memory(cfg, hw, model_config, free_memory(hw.device), runtime, base_is_loaded(cfg, hw))
    (log.info if estimate.fits else log.warning)("%s", estimate.line())
    return estimate


def _oom_reason(cfg: DictConfig, error: BaseException, estimate: Optional[MemoryEstimate]) -> str:
    known = estimate is not None and estimate.free is not None
    said = f"estimate {estimate.total / 1e9:.2f} GB, {estimate.free / 1e9:.1f} GB free" if known else "no estimate"
    return (f"out of memory at micro-batch {cfg.train.per_device_batch_size} x {cfg.data.max_length} tokens "
            f"({type(error).__name__}; {said})")


def _release_memory(hw: Hardware) -> None:
    gc.collect()
    if hw.device == "cuda":
        torch.cuda.empty_cache()


def _halve_micro_batch(cfg: DictConfig) -> DictConfig:
    micro, accum = halve_micro_batch(cfg.train.per_device_batch_size, cfg.train.grad_accum_steps)
    return OmegaConf.merge(cfg, {"train": {"per_device_batch_size": micro, "grad_accum_steps": accum}})


def _oom_summary(cfg: DictConfig, run_name: str, params: Dict[str, str], reason: str,
                 estimate: Optional[MemoryEstimate], retries: List[str]) -> TrialSummary:
    hint = "" if cfg.train.auto_micro_batch else "; train.auto_micro_batch=true retries at smaller micro-batches"
    fixes = f"; the estimate would fit with {' '.join(estimate.fixes)}" if estimate and estimate.fixes else ""
    log.error("%s%s%s", reason, fixes, hint)
    return TrialSummary(Status.OOM, stop_reason=reason + fixes + hint, run_name=run_name, params=params,
                        objective=Objective(cfg.objective.metric, cfg.objective.direction, float("nan")),
                        sequence_length=cfg.data.max_length,
                        memory_estimate=estimate.as_dict() if estimate else None)


def _attempt(cfg: DictConfig, hw: Hardware, splits: Splits, prompts: List[dict], estimate: Optional[MemoryEstimate],
             run_dir: Path, run_name: str, params: Dict[str, str], extra_callbacks: Sequence[TrainerCallback],
             extra_tags: Sequence[str]) -> TrialSummary:
    """One try at the trial, from the base load to the summary (written by run_trial)."""
    cache_dir = Path(cfg.cache_dir)
    task = TASKS[cfg.task.name]
    num_labels = _num_labels(cfg, splits) if task.model_kind == "sequence-classification" else None
    model, tokenizer, model_path = load_base(cfg, hw, cache_dir, num_labels)
    train_set, eval_set = task.datasets(cfg, tokenizer, splits, cache_dir, model_path)
    periodic_set, final_set = evaluation_sets(cfg, eval_set)
    memory = PeakMemory(hw.device)
    base = _measure_base(task, model, tokenizer, cfg, hw, splits, model_path)

    set_seed(cfg.seed)
    try:
        trained = attach_adapter(model, cfg, task.peft_task_type) if cfg.lora.enabled else model
    except BaseException:
        forget_base()  # a half-attached adapter cannot be undone: the next trial loads the base afresh
        raise
    tracker = Tracker(cfg, run_name, OmegaConf.to_container(cfg, resolve=True), list(extra_tags))
    recorder = MetricsRecorder(run_dir / METRICS_FILE, tracker)
    stoppers = [DivergenceGuard(cfg.train.divergence_factor), *extra_callbacks]
    compiled = CompiledSteps(trained, cfg.train.compile, quantized=cfg.lora.quantization != "none")
    try:
        trainer = use_console(use_loraplus(task.trainer(cfg, hw, trained, tokenizer, train_set, periodic_set, run_dir,
                                                        [recorder, memory, compiled, *stoppers]),
                                           cfg.optim.loraplus_ratio))
        loss_before = _base_eval(trainer, _base_key(task, cfg, hw, model_path, "eval"))["eval_loss"]  # step 0's point
        if final_set is not periodic_set:
            key = _base_key(task, cfg, hw, model_path, "eval-full")
            loss_before = _base_eval(trainer, key, final_set, "eval_full")["eval_full_loss"]
        clock = EvaluationClock(trainer)
        train_started = time.perf_counter()
        trainer.train()
        train_time = time.perf_counter() - train_started - clock.seconds  # the optimizer steps alone
        if final_set is periodic_set:
            loss_after = final_eval(trainer, recorder).get("loss")
        else:
            loss_after = trainer.evaluate(final_set, metric_key_prefix="eval_full")["eval_full_loss"]
        stopped = next((c for c in stoppers if getattr(c, "status", None)), None)
        after = task.measure(cfg, trained, tokenizer, splits) if stopped is None else {}
        tracker.log({**{f"test/{k}_before": v for k, v in _scores(base).items()},
                     **{f"test/{k}": v for k, v in _scores(after).items()}}, trainer.state.global_step)
        saved = _save_weights(cfg, trained, tokenizer, run_dir)
        trainable, total = count_parameters(trained)
        summary = TrialSummary(
            status=stopped.status if stopped else Status.COMPLETED,
            stop_reason=stopped.reason if stopped else None,
            run_name=run_name,
            params=params,
            before={"eval_loss": loss_before, **_scores(base)},
            after={"eval_loss": loss_after, **_scores(after)},
            final_loss=recorder.last_train.get("loss"),
            final_grad_norm=recorder.last_train.get("grad_norm"),
            data={**splits.stats(),  # rows whose replies do not fit data.max_length are dropped, and counted
                  "dropped_no_reply": len(splits.train) + len(splits.eval) - len(train_set) - len(eval_set)},
            eval_rows={"periodic": len(periodic_set), "final": len(final_set)},
            steps=trainer.state.global_step,
            epochs=trainer.state.epoch,
            tokens_seen=trainer.state.num_input_tokens_seen,
            train_tokens_per_s=round(trainer.state.num_input_tokens_seen / (train_time - (compiled.seconds or 0)), 1),
            train_time_s=round(train_time, 2),
            eval_time_s=round(clock.seconds, 2),
            compile_time_s=compiled.seconds,
            peak_memory_mb=memory.peak_mb,
            memory_kind=memory.kind,
            memory_estimate=estimate.as_dict() if estimate else None,
            trainable_params=trainable,
            total_params=total,
            device=hw.device,
            device_name=device_name(hw.device),
            precision=hw.precision,
            model_dtype=hw.model_dtype,
            attention=hw.attention,
            model_path=model_path,
            weights_dir=str(saved) if saved else None,
        )
        metric = cfg.objective.metric
        value = summary.metric(metric)
        summary.objective = Objective(metric, cfg.objective.direction, float("nan") if value is None else value)
        if stopped is None and prompts and cfg.eval.max_new_tokens:
            _write_answers(run_dir, prompts, base["answers"], after["answers"])
        tracker.finish(summary.status, summary.stop_reason)
        return summary
    except KeyboardInterrupt:
        tracker.finish(Status.INTERRUPTED, "interrupted by Ctrl-C")
        raise
    except BaseException as error:
        tracker.finish(Status.FAILED, f"{type(error).__name__}: {error}")
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
