"""The Trainer of one trial: its arguments from the config, a callback that records every logged step, and
one that stops a diverging trial."""

import json
import math
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ftharness.console import catch_ctrl_c, progress
from ftharness.evaluation import token_budget_batches
from ftharness.hardware import Hardware
from ftharness.loss import labelled_loss, supports_labelled_loss
from ftharness.tracking import Tracker


def training_arguments(cfg: DictConfig, hw: Hardware, output_dir: Path, args_class=TrainingArguments,
                       **overrides) -> TrainingArguments:
    """The Trainer's arguments from the config; `args_class` / `overrides` for trainers with their own (TRL's)."""
    warmup = cfg.optim.warmup
    arguments = dict(
        output_dir=str(output_dir),
        max_steps=cfg.train.max_steps,
        num_train_epochs=cfg.train.epochs,
        per_device_train_batch_size=cfg.train.per_device_batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        activation_checkpointing=cfg.train.gradient_checkpointing,
        optim=cfg.optim.name,
        learning_rate=cfg.optim.lr,
        lr_scheduler_type=cfg.optim.scheduler,
        warmup_steps=warmup if warmup < 1 else int(warmup),  # below 1: a ratio of the total steps
        weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.optim.max_grad_norm,
        logging_steps=cfg.train.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the trial), not be averaged away
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random",
        eval_strategy=_eval_strategy(cfg),
        eval_steps=cfg.train.eval_steps or None,
        save_strategy="no",  # the harness saves the adapter itself, once, as safetensors
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        seed=cfg.seed,
        use_cpu=hw.device == "cpu",
        bf16=hw.precision == "bf16",
        fp16=hw.precision == "fp16",
        disable_tqdm=True,
    )
    return args_class(**{**arguments, **overrides})


class LabelledLossTrainer(Trainer):
    """transformers' Trainer with the causal-LM loss computed at the labelled positions only (ftharness.loss):
    the same loss, without the logits of every prompt token, and with `share_prefix` the leading tokens all rows
    of a batch share run once. Evaluation returns the loss alone, in batches of at most `eval_batch_tokens`
    padded tokens (and `per_device_eval_batch_size` rows)."""

    def __init__(self, *args, eval_batch_tokens: int, share_prefix: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_batch_tokens = eval_batch_tokens
        self.share_prefix = share_prefix

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batches = token_budget_batches(lengths, self.args.eval_batch_size, self.eval_batch_tokens)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=self.data_collator)  # one device: no sharding

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not supports_labelled_loss(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.accelerator.autocast():  # it calls the decoder, not the forward that accelerate wraps in autocast
            loss = labelled_loss(model, inputs, num_items_in_batch, self.share_prefix)
        return (loss, {}) if return_outputs else loss


def _eval_strategy(cfg: DictConfig) -> str:
    if cfg.train.eval_per_epoch:
        return "epoch"
    return "steps" if cfg.train.eval_steps else "no"


TRAINER_TIMINGS = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time"}
TRAIN_LOG_KEYS = {"loss", "grad_norm", "learning_rate", "epoch", "num_input_tokens_seen", "train_runtime",
                  "train_tokens_per_second"}  # recorded under their own names; any other key is kept as it is


def _as_float(value) -> Optional[float]:
    return None if value is None else float(value)


class MetricsRecorder(TrainerCallback):
    """Appends each train / eval log to `metrics.jsonl` and forwards it to the tracker.

    tokens/s counts the non-padding tokens trained since the previous train log, over the time spent
    training (evaluation time excluded).
    """

    def __init__(self, path: Path, tracker: Tracker):
        self.path, self.tracker = path, tracker
        self.last_train: dict = {}
        self.last_eval: dict = {}
        self._clock = time.perf_counter()
        self._tokens = 0

    def _write(self, record: dict) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self._clock, self._tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_evaluate(self, args, state, control, **kwargs):
        self._clock = time.perf_counter()  # evaluation time does not count as training time

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs, step = logs or {}, state.global_step
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            record = {"kind": "train", "step": step, "loss": _as_float(logs["loss"]),
                      "grad_norm": _as_float(logs.get("grad_norm")), "learning_rate": logs.get("learning_rate"),
                      "epoch": logs.get("epoch"), "tokens_seen": tokens,
                      "tokens_per_s": round((tokens - self._tokens) / max(now - self._clock, 1e-9), 1),
                      **{k: v for k, v in logs.items() if k not in TRAIN_LOG_KEYS}}  # e.g. ORPO's rewards/*
            self._clock, self._tokens = now, tokens
            self.last_train = record
            self.tracker.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "step")}, step)
        elif "eval_loss" in logs:
            record = {"kind": "eval", "step": step, "epoch": logs.get("epoch"),
                      **{k.removeprefix("eval_"): v for k, v in logs.items()
                         if k.startswith("eval_") and k not in TRAINER_TIMINGS}}
            self.last_eval = record
            self.tracker.log({f"eval/{k}": v for k, v in record.items() if k not in ("kind", "step", "epoch")}, step)
        else:
            return
        self._write(record)


class DivergenceGuard(TrainerCallback):
    """Stops training once loss or grad_norm is NaN / inf, or exceeds `factor` times the largest of its first
    EARLY_LOGS logged values (0 disables the factor test): a diverged trial wastes the rest of its budget.

    Like every callback that can end a trial early, it exposes `status` and `reason` once it fired.
    """

    EARLY_LOGS = 3

    def __init__(self, factor: float):
        self.factor = factor
        self.early = {"loss": [], "grad_norm": []}
        self.status: Optional[str] = None
        self.reason: Optional[str] = None

    def _problem(self, key: str, value: float) -> Optional[str]:
        if not math.isfinite(value):
            return f"{key} is {value}"
        early = self.early[key]
        if len(early) < self.EARLY_LOGS:
            early.append(value)
        elif self.factor and value > self.factor * max(early):
            return f"{key} {value:.4g} > {self.factor:g} x its early maximum {max(early):.4g}"
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.early:
            value = (logs or {}).get(key)
            problem = None if value is None or self.status else self._problem(key, float(value))
            if problem:
                self.status, self.reason = "diverged", f"diverged at step {state.global_step}: {problem}"
                control.should_training_stop = True


class ProgressBars(TrainerCallback):
    """The console's view of a Trainer: a bar over the optimizer steps (loss, grad_norm, tokens/s; tqdm adds
    the ETA) and one over the batches of each evaluation, in place of transformers' printed log dicts. Their
    updates raise a Ctrl-C that Python dropped (console.catch_ctrl_c)."""

    def __init__(self):
        self.training = self.evaluating = None
        self._step = 0
        self._clock, self._tokens = 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = progress(state.max_steps, "train", unit="step")
        self._step, self._clock, self._tokens = state.global_step, time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.training is not None:
            self.training.update(state.global_step - self._step)
            self._step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training is None or "loss" not in (logs or {}):
            return
        figures = {"loss": f"{float(logs['loss']):.3g}"}
        if logs.get("grad_norm") is not None:
            figures["grad_norm"] = f"{float(logs['grad_norm']):.3g}"
        elapsed = time.perf_counter() - self._clock
        if state.num_input_tokens_seen and elapsed > 0:
            figures["tok/s"] = f"{(state.num_input_tokens_seen - self._tokens) / elapsed:.0f}"
        self.training.set_postfix(figures, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training is not None:
            self.training.close()
            self.training = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.evaluating is None:
            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            self.evaluating = progress(total, "eval", unit="batch")
        self.evaluating.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.evaluating is not None:
            self.evaluating.close()
            self.evaluating = None

    on_predict = on_evaluate


def use_console(trainer: Trainer) -> Trainer:
    """The console's hooks in a Trainer: `ProgressBars` in place of transformers' output (printed log dicts, or
    its own bar), and Ctrl-C caught for the trial (after the tracker set its own handler)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressBars())
    catch_ctrl_c()
    return trainer


def final_eval(trainer: Trainer, recorder: MetricsRecorder) -> dict:
    """Eval metrics at the last step, reusing the periodic evaluation when it already ran there."""
    if recorder.last_eval.get("step") != trainer.state.global_step:
        trainer.evaluate()
    return recorder.last_eval
