"""End to end on the embedded SmolLM2-135M-Instruct: the real CLI, a few steps, everything read back."""

import json
import re

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import only_run_dir, read_jsonl, run_cli, swanlab_series

pytestmark = pytest.mark.slow
SHORT = ["data.train_size=32", "data.eval_size=8", "data.test_size=16", "train.max_steps=4", "train.eval_steps=2",
         "train.per_device_batch_size=4", "eval.max_new_tokens=12"]


def test_default_model_trains_and_everything_it_wrote_reads_back(tmp_path):
    result = run_cli(*SHORT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4 and summary["device"] == "cpu"
    assert summary["total_params"] > 134_000_000 and summary["trainable_params"] > 1_000_000
    assert summary["after"]["eval_loss"] < summary["before"]["eval_loss"]
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(r["grad_norm"] > 0 for r in train)
    generations = json.loads((run_dir / "generations.json").read_text())
    assert generations[0]["prompt"] == "Is 9.11 larger than 9.9?" and generations[0]["before"]

    series = swanlab_series(tmp_path / "outputs" / "swanlog" / "default", summary["run_name"])
    assert [s for s, _ in series["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in series["train/grad_norm"]] == pytest.approx([r["grad_norm"] for r in train])

    base = AutoModelForCausalLM.from_pretrained(summary["model_path"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    ids = tokenizer("Which is larger, 4.7 or 4.65?", return_tensors="pt").input_ids
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, run_dir / "adapter")
        after = adapted(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_qlora_trains_on_a_4bit_base_on_the_cpu(tmp_path):
    result = run_cli(*SHORT, "lora=qlora", "train.max_steps=3", "tracker.mode=disabled", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["final_loss"] > 0 and summary["final_grad_norm"] > 0


def test_orpo_on_the_default_model_logs_rewards(tmp_path):
    result = run_cli(*SHORT, "task=orpo", "train.max_steps=3", "tracker.mode=disabled", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objective"]["metric"] == "test_accuracy"
    assert 0 <= summary["after"]["test_accuracy"] <= 1
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 3 and all("rewards/margins" in r and "logps/chosen" in r for r in train)


def test_classification_on_the_embedded_encoder_learns(tmp_path):
    result = run_cli("task=classification", "train.eval_steps=20", "tracker.mode=disabled",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["total_params"] > 22_000_000 and summary["status"] == "completed"
    assert summary["after"]["test_accuracy"] >= 0.8 > summary["before"]["test_accuracy"]


def test_the_default_study_confirms_its_best_points_and_its_best_trains_in_one_command(tmp_path):
    small = ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.options.n_startup_trials=2", "train.max_steps=3",
             "hydra.sweeper.confirm.seeds=1", "data.eval_size=8", "data.test_size=16"]
    result = run_cli("-m", "sweep=default", *small, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"confirm 2/2  lr=\S+,seed=43\n", result.stdout) and "Confirmation: " in result.stdout
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "default-study").iterdir()
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["confirmation"]["verdict"] and len(best["best"]["confirmed"]["values"]) == 2

    trained = run_cli(f"from_best={sweep_dir}", "train.max_steps=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = only_run_dir(tmp_path, "default-study")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_name"] == "best of default-study" and summary["steps"] == 2
    assert summary["from_best"]["trial"] == best["best"]["number"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["optim"]["lr"] == pytest.approx(best["best"]["params"]["optim.lr"])
    assert config["lora"]["r"] == best["best"]["params"]["lora.r"]
