"""The Trainer of a trial: its optimizer on the CPU, and the time its evaluations take kept out of its speed."""

import logging
import time
from pathlib import Path

from conftest import compose_config
from ftharness.model.hardware import resolve_hardware
from ftharness.trial import trainer
from ftharness.trial.recipe import run_trial
from ftharness.trial.trainer import LabelledLossTrainer, optimizer_name


def test_a_paged_optimizer_runs_unpaged_on_the_cpu_with_one_line_said_once(caplog):
    trainer._say_unpaged.cache_clear()
    cfg = compose_config("optim=paged_adamw_8bit", "train.device=cpu")
    with caplog.at_level(logging.WARNING, logger="ftharness"):
        names = [optimizer_name(cfg, resolve_hardware(cfg)) for _ in range(3)]
    assert names == ["adamw_8bit"] * 3
    line, = [r.getMessage() for r in caplog.records]
    assert "optim.name=paged_adamw_8bit" in line and "adamw_8bit runs instead" in line
    assert optimizer_name(compose_config("optim=adamw_8bit", "train.device=cpu"), resolve_hardware(cfg)) == "adamw_8bit"


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
