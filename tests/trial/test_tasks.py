"""Every task (sft, orpo, classification) trains on the tiny model, records its own metrics, and reruns
identically on the reused base."""

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config, read_jsonl
from ftharness.config.validation import TASK_NAMES
from ftharness.data.sources import DataError
from ftharness.model.loading import forget_base
from ftharness.trial.recipe import run_trial
from ftharness.trial.tasks import TASKS, _classification_metrics


def _trial(tmp_path: Path, name: str, *overrides: str) -> dict:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return run_trial(compose_config(*overrides), run_dir, name, {})


def test_the_config_knows_exactly_the_implemented_tasks():
    assert set(TASK_NAMES) == set(TASKS)


def test_orpo_logs_preference_metrics_and_scores_pairs(tmp_path):
    summary = _trial(tmp_path, "orpo", "task=orpo", "optim.lr=1e-2")
    assert summary.status == "completed" and summary.objective.metric == "test_accuracy"
    assert summary.objective.value == summary.after["test_accuracy"]
    assert 0 <= summary.before["test_accuracy"] <= 1
    train = [r for r in read_jsonl(tmp_path / "orpo" / "metrics.jsonl") if r["kind"] == "train"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "log_odds_ratio", "nll_loss", "grad_norm"):
        assert all(key in r for r in train), key
    evals = [r for r in read_jsonl(tmp_path / "orpo" / "metrics.jsonl") if r["kind"] == "eval"]
    assert "rewards/accuracies" in evals[-1]


def test_orpo_evaluates_at_the_training_micro_batch(tmp_path):
    """TRL computes the full logits of both replies of every pair: eval.batch_size (bounded by tokens only in
    the harness's own evaluation) would be far more than the micro-batch the memory estimate sized."""
    from ftharness.data.splits import load_splits
    from ftharness.model.adapters import attach_adapter, detach_adapter
    from ftharness.model.hardware import resolve_hardware
    from ftharness.model.loading import load_base

    cfg = compose_config("task=orpo", "train.per_device_batch_size=2")
    task = TASKS["orpo"]
    model, tokenizer, path = load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))
    train_set, eval_set = task.datasets(cfg, tokenizer, load_splits(cfg.data), Path(cfg.cache_dir), path)
    adapted = attach_adapter(model, cfg)
    try:
        trainer = task.trainer(cfg, resolve_hardware(cfg), adapted, tokenizer, train_set, eval_set, tmp_path, [])
        assert trainer.args.per_device_eval_batch_size == 2 < cfg.eval.batch_size
    finally:
        detach_adapter(adapted)


def test_classification_trains_the_head_and_lora_and_reports_accuracy_and_f1(tmp_path):
    forget_base()
    first = _trial(tmp_path, "first", "task=classification", "model=tiny", "data.test_size=16")
    second = _trial(tmp_path, "second", "task=classification", "model=tiny", "data.test_size=16")
    assert first.status == "completed"
    assert set(first.after) == {"eval_loss", "test_accuracy", "test_f1"}
    assert first.after == second.after  # the reused base (and its seeded head) gives the same result
    assert "accuracy" in [r for r in read_jsonl(tmp_path / "first" / "metrics.jsonl") if r["kind"] == "eval"][-1]
    adapter = json.loads((tmp_path / "first" / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"]
    assert not (tmp_path / "first" / "generations.json").exists()  # an encoder answers no prompts


def test_macro_f1_weighs_every_class_the_same():
    scores = _classification_metrics(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0]))
    assert scores["accuracy"] == 0.75 and scores["f1"] == pytest.approx((0 + 2 * 3 / 7) / 2)


@pytest.mark.parametrize("task,data", [("sft", "decimal_preferences"), ("orpo", "decimal"),
                                       ("classification", "decimal")])
def test_a_task_refuses_data_it_cannot_train_on_before_loading_a_model(tmp_path, task, data):
    with pytest.raises(DataError, match=f"does not fit task.name={task}"):
        _trial(tmp_path, "wrong", f"task={task}", "model=tiny", f"data={data}")
