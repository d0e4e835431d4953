"""The embedded task that can overfit: a share of the training rows answered wrongly on purpose (data.label_noise),
the eval and test rows left right; on the tiny model the training loss falls while the held-out loss turns up."""

from pathlib import Path

import pytest

from conftest import compose_config, read_jsonl
from ftharness.data.splits import load_splits
from ftharness.trial.recipe import run_trial

SPLITS = ["data.train_size=32", "data.eval_size=8", "data.test_size=8"]


@pytest.mark.parametrize("task,answer", [("decimal", "messages"), ("decimal_preferences", "chosen"),
                                         ("sentiment", "label")])
def test_a_share_of_the_training_rows_is_answered_wrongly_and_the_eval_and_test_rows_stay_right(task, answer):
    clean = load_splits(compose_config(f"data={task}", *SPLITS).data)
    noisy = load_splits(compose_config(f"data={task}", *SPLITS, "data.label_noise=0.25").data)
    wrong = [(c, n) for c, n in zip(clean.train, noisy.train) if c != n]
    assert len(wrong) == 8 and noisy.stats()["train_wrong_answers"] == 8 and clean.stats()["train_wrong_answers"] == 0
    for right, flipped in wrong:
        assert flipped[answer] != right[answer]
        if task == "decimal":  # the reply trained on is the other candidate, and the label says so
            assert flipped["messages"][-1]["content"] == right["candidates"][1 - right["label"]]
            assert flipped["label"] == 1 - right["label"]
    assert (noisy.eval, noisy.test) == (clean.eval, clean.test)
    again = load_splits(compose_config(f"data={task}", *SPLITS, "data.label_noise=0.25").data)
    assert again.train == noisy.train  # the wrong rows are picked by data.seed


def test_the_noisy_task_overfits_the_tiny_model_train_loss_falls_while_eval_loss_rises(tmp_path: Path):
    """Full fine-tuning at a constant rate, 16 chats (4 wrong) for 60 epochs of 2 steps: a few seconds."""
    cfg = compose_config("lora=none", "data.train_size=16", "data.label_noise=0.25", "train.max_steps=-1",
                         "train.epochs=60", "train.eval_per_epoch=true", "optim.lr=3e-3", "optim.scheduler=constant",
                         "train.divergence_factor=0", "train.save_adapter=false", "eval.max_new_tokens=0",
                         "data.test_size=0")
    summary = run_trial(cfg, tmp_path, "overfit", {})
    assert summary.status == "completed" and summary.data["train_wrong_answers"] == 4
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r["loss"] for r in records if r["kind"] == "train"]
    held_out = [r["loss"] for r in records if r["kind"] == "eval"]
    best = held_out.index(min(held_out))
    assert 0 < best < len(held_out) - 10  # the held-out loss bottoms out early ...
    assert held_out[-1] > 1.3 * held_out[best]  # ... and rises well above its best
    assert min(train[-10:]) < 0.1 * train[0] and max(train[-10:]) < min(train[:2 * best])  # memorised: still falling
