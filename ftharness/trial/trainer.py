"""The Trainer of one trial: its arguments from the config, the loss at the labelled positions, and the console's
hooks; the callbacks that record and guard each logged step are in ftharness/trial/callbacks.py."""

import functools
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ftharness.model.hardware import Hardware
from ftharness.trial.callbacks import MetricsRecorder, ProgressBars
from ftharness.trial.evaluation import token_budget_batches
from ftharness.trial.loss import labelled_loss, model_inputs, supports_labelled_loss
from ftharness.ui.console import catch_ctrl_c

log = logging.getLogger(__name__)


UNPAGED = {"paged_adamw_8bit": "adamw_8bit"}  # paged optimizers page their states through CUDA's unified memory
FUSED_ON_CUDA = {"adamw_torch": "adamw_torch_fused"}  # the same update in one kernel per parameter group on a GPU,
# where the foreach AdamW launches several per group and a step is bound by launches (issue 36)


def optimizer_name(cfg: DictConfig, hw: Hardware) -> str:
    """`optim.name`, but a paged optimizer's unpaged twin on the CPU (same states; nothing to page them to), said
    once a process in one console line: bitsandbytes would fall back by itself, with a Python warning per run; and
    torch's fused AdamW in place of its foreach one on a GPU."""
    name = cfg.optim.name
    if hw.device == "cpu" and name in UNPAGED:
        _say_unpaged(name)
        return UNPAGED[name]
    if hw.device == "cuda":
        return FUSED_ON_CUDA.get(name, name)
    return name


@functools.cache
def _say_unpaged(name: str) -> None:
    log.warning("optim.name=%s pages its states through CUDA memory; on the CPU %s runs instead (the same 8-bit "
                "states, unpaged)", name, UNPAGED[name])


def use_loraplus(trainer: Trainer, ratio: Optional[float]) -> Trainer:
    """LoRA+ when `optim.loraplus_ratio` is set: peft's optimizer gives the B matrices (and biases) `ratio` x the
    learning rate of the A matrices, through the optimizer class that `optim.name` names for the Trainer (AdamW,
    8-bit AdamW, ...); the Trainer's schedule then scales each group's rate alike."""
    if ratio is None:
        return trainer
    from peft.optimizers import create_loraplus_optimizer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    trainer.optimizer = create_loraplus_optimizer(trainer.model, optimizer_cls, loraplus_lr_ratio=ratio,
                                                  loraplus_weight_decay=trainer.args.weight_decay, **kwargs)
    return trainer


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
        optim=optimizer_name(cfg, hw),
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
        # packed rows carry no attention mask and no padding: "non_padding" would then count the ids that differ from
        # the pad token, leaving out every end-of-turn token equal to it (SmolLM2's, the tiny model's: 96 of the
        # 3,713 tokens of an epoch of 48 rows); "all" counts the flattened batch's length, every token real
        include_num_input_tokens_seen="all" if cfg.data.packing else "non_padding",
        seed=cfg.seed,
        use_cpu=hw.device == "cpu",
        bf16=hw.precision == "bf16",
        fp16=hw.precision == "fp16",
        disable_tqdm=True,
    )
    return args_class(**{**arguments, **overrides})


def shares_prefix_in_training(setting: Any, device: str) -> bool:
    """Whether training runs a batch's shared prefix once (`train.share_prefix`; evaluation does unless it is false).
    It saves arithmetic (~30 % of a step on the embedded task) for a second decoder call with gradients, which
    adds 65 % to the step's operations (the study's trial on SmolLM2: 19,668 aten ops a step with it, 11,907 without,
    the stock pipeline 10,712; benchmarks/step_ops.py): a gain where arithmetic bounds the step (a CPU), a loss where
    kernel launches do (the study's trial on a GPU, 2.7 % of an H200's bf16 peak). `auto` shares on the CPU only."""
    return setting is True or (setting == "auto" and device != "cuda")


class LabelledLossTrainer(Trainer):
    """transformers' Trainer with the causal-LM loss computed at the labelled positions only (ftharness/trial/loss.py):
    the same loss, without the logits of every prompt token, and with `share_prefix` the leading tokens all rows
    of a batch share run once. Evaluation returns the loss alone, in batches of at most `eval_batch_tokens`
    padded tokens (and `per_device_eval_batch_size` rows).

    At most one host sync per optimizer step (benchmarks/step_ops.py; the stock loop makes 2 a step and 1 a
    micro-batch, the loss 7 more a micro-batch): tokens are counted from the collator's host facts
    (ftharness/trial/loss.py with_host_facts), the logged loss and grad_norm read back in one copy, the FLOPs'
    parameter count taken once."""

    def __init__(self, *args, eval_batch_tokens: int, share_prefix: Any, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_batch_tokens = eval_batch_tokens
        self.share_prefix = shares_prefix_in_training(share_prefix, self.args.device.type)
        self.share_prefix_in_eval = share_prefix is not False

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batches = token_budget_batches(lengths, self.args.eval_batch_size, self.eval_batch_tokens)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=self.data_collator)  # one device: no sharding

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not supports_labelled_loss(model):
            inputs = {**model_inputs(inputs), "labels": inputs["labels"]}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.accelerator.autocast():  # it calls the decoder, not the forward that accelerate wraps in autocast
            share = self.share_prefix if model.training else self.share_prefix_in_eval
            loss = labelled_loss(model, inputs, num_items_in_batch, share)
        return (loss, {}) if return_outputs else loss

    def _track_num_input_tokens(self, inputs):
        """The tokens the collator counted on the host (the stock count reads a device sum back per micro-batch)."""
        if "num_tokens" not in inputs:
            return super()._track_num_input_tokens(inputs)
        self.state.num_input_tokens_seen += inputs["num_tokens"]

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        """The logged loss and grad_norm read back in one device-to-host copy (the stock loop reads each with
        `.item()`); the device's loss sum is then reset as the stock loop resets it."""
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged and \
                torch.is_tensor(grad_norm):
            loss, grad_norm = torch.stack([tr_loss.detach().float(), grad_norm.detach().float()]).tolist()
            tr_loss.zero_()
            tr_loss = torch.tensor(loss)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def floating_point_ops(self, inputs) -> int:
        """The stock estimate (6 x tokens x parameters), its parameters counted once per trial rather than walked
        every micro-batch (4.7 ms on a 30-layer peft model)."""
        return 6 * inputs["input_ids"].numel() * self._parameters_without_embeddings

    @functools.cached_property
    def _parameters_without_embeddings(self) -> int:
        return self.model.num_parameters(exclude_embeddings=True)


def _eval_strategy(cfg: DictConfig) -> str:
    if cfg.train.eval_per_epoch:
        return "epoch"
    return "steps" if cfg.train.eval_steps else "no"


def use_console(trainer: Trainer) -> Trainer:
    """The console's hooks in a Trainer: `ProgressBars` in place of transformers' output (printed log dicts, or
    its own bar), and Ctrl-C caught for the trial (after the tracker set its own handler)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressBars())
    catch_ctrl_c()
    return trainer


class EvaluationClock:
    """The seconds a Trainer has spent in `evaluate`, the evaluations that `train` runs at its eval steps included:
    the summary's training time and tokens/s leave them out (counted in, a trial whose last step evaluated 64
    EmoLLM rows inside `train` reported 31 tokens/s while its steps ran at 153-180)."""

    def __init__(self, trainer: Trainer):
        self.seconds = 0.0
        self._evaluate = trainer.evaluate
        trainer.evaluate = self._timed  # the Trainer's own calls, inside `train`, go through its attribute too

    def _timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._evaluate(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def final_eval(trainer: Trainer, recorder: MetricsRecorder) -> dict:
    """Eval metrics at the last step, reusing the periodic evaluation when it already ran there."""
    if recorder.last_eval.get("step") != trainer.state.global_step:
        trainer.evaluate()
    return recorder.last_eval
