"""The Trainer of a trial: its optimizer on the CPU and LoRA+, its evaluations kept out of its speed, the tokens it
counts, its host syncs cut without changing a number."""

import dataclasses
import logging
import time
from pathlib import Path

import pytest
from transformers import Trainer

from conftest import compose_config, read_jsonl
from ftharness.data.splits import load_splits
from ftharness.model.adapters import attach_adapter, detach_adapter
from ftharness.model.hardware import resolve_hardware
from ftharness.model.loading import load_base
from ftharness.trial import tasks, trainer
from ftharness.trial.recipe import run_trial
from ftharness.trial.tasks import TASKS
from ftharness.trial.trainer import (
    LabelledLossTrainer,
    optimizer_name,
    shares_prefix_in_training,
    training_arguments,
    use_loraplus,
)


@pytest.mark.parametrize("setting, device, shares", [
    ("auto", "cpu", True),  # arithmetic bounds a CPU's step: the prefix once saves ~30 % of it
    ("auto", "cuda", False),  # kernel launches bound the study's trial on a GPU: no second decoder call
    (True, "cuda", True), (False, "cpu", False),
])
def test_auto_shares_the_prefix_in_training_where_arithmetic_bounds_the_step(setting, device, shares):
    assert shares_prefix_in_training(setting, device) is shares


def test_a_paged_optimizer_runs_unpaged_on_the_cpu_with_one_line_said_once(caplog):
    trainer._say_unpaged.cache_clear()
    cfg = compose_config("optim=paged_adamw_8bit", "train.device=cpu")
    with caplog.at_level(logging.WARNING, logger="ftharness"):
        names = [optimizer_name(cfg, resolve_hardware(cfg)) for _ in range(3)]
    assert names == ["adamw_8bit"] * 3
    line, = [r.getMessage() for r in caplog.records]
    assert "optim.name=paged_adamw_8bit" in line and "adamw_8bit runs instead" in line
    assert optimizer_name(compose_config("optim=adamw_8bit", "train.device=cpu"), resolve_hardware(cfg)) == "adamw_8bit"


def test_adamw_is_torchs_fused_one_on_a_gpu_and_the_foreach_one_elsewhere():
    cfg = compose_config("optim=adamw_torch", "train.device=cpu")
    cpu = resolve_hardware(cfg)
    assert optimizer_name(cfg, cpu) == "adamw_torch"
    assert optimizer_name(cfg, dataclasses.replace(cpu, device="cuda")) == "adamw_torch_fused"
    assert optimizer_name(compose_config("optim=adamw_8bit"), dataclasses.replace(cpu, device="cuda")) == "adamw_8bit"


def test_a_slow_evaluation_inside_training_is_left_out_of_the_steps_time_and_tokens_per_s(tmp_path, monkeypatch):
    evaluate = LabelledLossTrainer.evaluate

    def slow_evaluate(self, *args, **kwargs):
        time.sleep(1.0)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(LabelledLossTrainer, "evaluate", slow_evaluate)
    run_dir = Path(tmp_path)
    summary = run_trial(compose_config("train.max_steps=4", "train.eval_steps=2"), run_dir, "slow-eval", {})
    # evaluations at steps 2 and 4 inside `train`; the final one reuses step 4's: 2 s of evaluation at least
    assert summary.eval_time_s >= 2.0
    assert summary.train_time_s < 1.5  # four tiny-model steps, not the evaluations among them
    rounding = 0.005  # train_time_s is written to 2 decimals; the tiny model's steps take ~0.1 s
    slowest, fastest = (summary.tokens_seen / (summary.train_time_s + d) for d in (rounding, -rounding))
    assert slowest <= summary.train_tokens_per_s <= fastest


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_8bit"])
def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate_of_the_a_matrices(tmp_path, optim):
    cfg = compose_config(f"optim={optim}", "optim.lr=1e-3", "optim.loraplus_ratio=16", "train.device=cpu",
                         "train.eval_steps=0")
    hw = resolve_hardware(cfg)
    model, tokenizer, _ = load_base(cfg, hw, Path(cfg.cache_dir))
    adapted = attach_adapter(model, cfg)
    try:
        built = use_loraplus(LabelledLossTrainer(model=adapted, args=training_arguments(cfg, hw, tmp_path),
                                                 eval_batch_tokens=1000, share_prefix=False), 16)
        names = {id(p): name for name, p in adapted.named_parameters()}
        lr_of = {names[id(p)]: group["lr"] for group in built.optimizer.param_groups for p in group["params"]}
        assert {lr for name, lr in lr_of.items() if "lora_A" in name} == {1e-3}
        assert {lr for name, lr in lr_of.items() if "lora_B" in name} == {1e-3 * 16}
        assert type(built.optimizer).__module__.startswith("bitsandbytes" if optim == "adamw_8bit" else "torch")
    finally:
        detach_adapter(adapted)
    assert use_loraplus(built, None) is built  # null: the Trainer builds its own optimizer


@pytest.mark.parametrize("packing", [True, False])
def test_a_trial_counts_every_token_it_trained_on_end_of_turn_tokens_included(tmp_path, packing):
    """The tiny tokenizer's pad token is its end-of-turn token, as SmolLM2's: packed rows have no attention mask
    to tell them from padding."""
    cfg = compose_config(f"data.packing={str(packing).lower()}", "train.max_steps=-1", "train.epochs=1",
                         "train.eval_steps=0", "eval.max_new_tokens=0")
    summary = run_trial(cfg, tmp_path, "tokens", {})
    model, tokenizer, model_path = load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))
    train_set, _ = TASKS["sft"].datasets(cfg, tokenizer, load_splits(cfg.data), Path(cfg.cache_dir), model_path)
    rows = train_set["input_ids"]  # one epoch: every training row once
    assert summary.steps == -(-len(rows) // cfg.train.per_device_batch_size)
    end_of_turn = sum(ids.count(tokenizer.pad_token_id) for ids in rows)
    assert end_of_turn >= len(rows)  # every chat ends its turns with it
    assert summary.tokens_seen == sum(len(ids) for ids in rows)


def test_the_host_facts_and_the_one_copy_log_give_the_curves_eval_loss_and_tokens_of_the_stock_path(tmp_path,
                                                                                                     monkeypatch):
    """Today's path against the one before the syncs were cut (facts found on the device, the stock loop's token
    count, logging and FLOPs): the same loss and grad_norm curves, eval loss and tokens."""
    cfg = compose_config("train.max_steps=4", "train.eval_steps=2", "eval.max_new_tokens=0")
    runs = {"today": run_trial(cfg, tmp_path / "today", "today", {})}
    monkeypatch.setattr(tasks, "with_host_facts", lambda collator: collator)
    for name in ("_track_num_input_tokens", "_maybe_log_save_evaluate", "floating_point_ops"):
        monkeypatch.setattr(LabelledLossTrainer, name, getattr(Trainer, name))
    runs["before"] = run_trial(cfg, tmp_path / "before", "before", {})
    curves = {name: [(r["step"], r["loss"], r["grad_norm"]) for r in read_jsonl(tmp_path / name / "metrics.jsonl")
                     if r["kind"] == "train"] for name in runs}
    assert [step for step, _, _ in curves["today"]] == [1, 2, 3, 4]
    for (step, loss, norm), (step_before, loss_before, norm_before) in zip(curves["today"], curves["before"]):
        assert step == step_before
        assert loss == pytest.approx(loss_before, rel=1e-5) and norm == pytest.approx(norm_before, rel=1e-5)
    assert runs["today"].after["eval_loss"] == pytest.approx(runs["before"].after["eval_loss"], rel=1e-5)
    assert runs["today"].tokens_seen == runs["before"].tokens_seen
