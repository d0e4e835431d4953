"""The callbacks of a trial's Trainer: one records every logged step, one stops a diverging trial, one draws
the console's progress bars."""

import json
import math
import time
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from ftharness.contract import Status
from ftharness.ui.console import progress
from ftharness.ui.tracking import Tracker

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
        self.status: Optional[Status] = None
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
                self.status, self.reason = Status.DIVERGED, f"diverged at step {state.global_step}: {problem}"
                control.should_training_stop = True


class ProgressBars(TrainerCallback):
    """The console's view of a Trainer: a bar over the optimizer steps (loss, grad_norm, tokens/s; tqdm adds
    the ETA) and one over the batches of each evaluation, in place of transformers' printed log dicts. Their
    updates raise a Ctrl-C that Python dropped (ftharness/ui/console.py catch_ctrl_c)."""

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
