"""The path a real user takes, on the tiny model: an EmoLLM-shaped file of long multi-turn dialogues, before/after
answers from its held-out rows, bounded evaluation measured once per base, a memory estimate checked against
the measured peak, out-of-memory trials recorded (and retried at smaller micro-batches), bad input in one line."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, Trainer

from conftest import TINY, compose_config, finished_job, read_jsonl, run_cli
from emollm_shaped import write_emollm_file
from ftharness import compare
from ftharness.data.splits import load_splits
from ftharness.model.hardware import Hardware
from ftharness.model.loading import forget_base
from ftharness.model.memory import estimate_memory
from ftharness.sweep.telling import job_outcome
from ftharness.trial import recipe
from ftharness.trial.evaluation import before_after_prompts, token_budget_batches
from ftharness.trial.recipe import run_trial
from ftharness.trial.trainer import LabelledLossTrainer

EMOLLM = ["data=emollm", "data.eval_size=12", "data.test_size=0", "data.max_length=256", "eval.max_samples=4",
          "eval.max_new_tokens=4"]
# A sweep whose second trial (lr 2e-3) runs out of memory at its first step; prints how often the base was evaluated.
INJECT_OOM = """
import runpy, sys, atexit, torch, transformers
base_evals = []
evaluate, step = transformers.Trainer.evaluate, transformers.Trainer.training_step
def counted(self, *args, **kwargs):
    if self.state.global_step == 0:
        base_evals.append(1)
    return evaluate(self, *args, **kwargs)
def training_step(self, *args, **kwargs):
    if self.args.learning_rate == 2e-3:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
    return step(self, *args, **kwargs)
transformers.Trainer.evaluate, transformers.Trainer.training_step = counted, training_step
atexit.register(lambda: print(f"BASE_EVALS={len(base_evals)}"))
sys.argv = ["ftharness", *sys.argv[1:]]
runpy.run_module("ftharness", run_name="__main__")
"""


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each test starts as a new process would: no base model, no base measurements."""
    forget_base()
    recipe._base_results.clear()
    yield
    forget_base()


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory) -> Path:
    return write_emollm_file(tmp_path_factory.mktemp("data") / "emollm.json", 60)


def _trial(tmp_path: Path, name: str, *overrides: str) -> dict:
    cfg = compose_config(*overrides)
    run_dir = tmp_path / name
    run_dir.mkdir()
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)  # as the CLI does
    return run_trial(cfg, run_dir, name, {})


def test_answers_come_from_held_out_dialogues_with_their_reference(tmp_path, dialogues):
    cfg = compose_config(*EMOLLM, f"data.path={dialogues}")
    held_out = load_splits(cfg.data).eval[:3]
    _trial(tmp_path, "run", *EMOLLM, f"data.path={dialogues}")
    rows = json.loads((tmp_path / "run" / "generations.json").read_text())
    assert [r["prompt"] for r in rows] == [chat["messages"][1]["content"] for chat in held_out]  # the first user turn
    assert [r["reference"] for r in rows] == [chat["messages"][2]["content"] for chat in held_out]
    assert all(r["system"] == held_out[0]["messages"][0]["content"] and r["before"] is not None for r in rows)
    assert (tmp_path / "run" / "generations.md").read_text().startswith("| prompt | reference | before | after |")


def test_compare_answers_the_held_out_dialogues_of_the_runs_data_beside_their_reference(tmp_path, dialogues):
    _trial(tmp_path, "run", *EMOLLM, f"data.path={dialogues}", "train.max_steps=1", "train.eval_steps=0")
    compare.main([str(tmp_path / "run"), "--max-new-tokens", "3", "--output", str(tmp_path / "c.md")])
    table = [line for line in (tmp_path / "c.md").read_text().splitlines() if line.startswith("|")]
    generations = json.loads((tmp_path / "run" / "generations.json").read_text())
    assert table[0] == "| prompt | reference | base | run |" and len(table) == 2 + 3
    assert table[2].startswith(f"| {generations[0]['prompt']} | {generations[0]['reference']} |")


def test_given_prompts_and_the_embedded_task_keep_their_own_questions(dialogues):
    given = compose_config(*EMOLLM, f"data.path={dialogues}", "eval.prompts=[hello]")
    assert [p["prompt"] for p in before_after_prompts(given, load_splits(given.data))] == ["hello"]
    embedded = compose_config()
    prompts = before_after_prompts(embedded, load_splits(embedded.data))
    assert prompts[0]["prompt"] == "Is 9.11 larger than 9.9?" and prompts[0]["reference"] is None


def test_the_base_is_evaluated_once_for_three_trials_and_every_curve_starts_at_it(tmp_path, dialogues, caplog):
    caplog.set_level(logging.INFO, logger="ftharness.trial.recipe")
    summaries = [_trial(tmp_path, f"lr{lr}", *EMOLLM, f"data.path={dialogues}", f"optim.lr={lr}")
                 for lr in ("1e-3", "2e-3", "3e-3")]
    assert sum("base model: eval loss on" in r.message for r in caplog.records) == 1
    starts = [read_jsonl(tmp_path / f"lr{lr}" / "metrics.jsonl")[0] for lr in ("1e-3", "2e-3", "3e-3")]
    assert all(s["kind"] == "eval" and s["step"] == 0 and s["loss"] == starts[0]["loss"] for s in starts)
    assert {s.before["eval_loss"] for s in summaries} == {starts[0]["loss"]}


def test_periodic_evals_use_the_fixed_subset_and_the_final_one_can_take_the_whole_split(tmp_path, dialogues,
                                                                                         monkeypatch):
    seen = []
    original = LabelledLossTrainer.get_eval_dataloader

    def recording(self, eval_dataset=None):
        seen.append((self.state.global_step, len(eval_dataset if eval_dataset is not None else self.eval_dataset)))
        return original(self, eval_dataset)

    monkeypatch.setattr(LabelledLossTrainer, "get_eval_dataloader", recording)
    summary = _trial(tmp_path, "run", *EMOLLM, f"data.path={dialogues}", "eval.final=full")
    rows = summary.eval_rows
    assert rows == {"periodic": 4, "final": 12}
    assert [n for step, n in seen if 0 < step < summary.steps] == [4]  # eval_steps=2 of 4 steps: one periodic
    assert seen[0] == (0, 4) and (0, 12) in seen and seen[-1] == (summary.steps, 12)


def test_eval_batches_fill_a_token_budget_longest_rows_first():
    lengths = [10, 300, 40, 40, 120, 5, 600]
    batches = token_budget_batches(lengths, max_rows=3, max_tokens=250)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6] and batches[1] == [1]  # rows over the budget go alone, the longest first
    assert all(len(b) <= 3 and (len(b) == 1 or len(b) * lengths[b[0]] <= 250) for b in batches)


def test_eval_batches_count_a_group_as_its_rows_and_never_split_it():
    lengths, sizes = [40, 40, 30, 20, 20], [3, 2, 2, 1, 4]
    batches = token_budget_batches(lengths, max_rows=5, max_tokens=10_000, sizes=sizes)
    assert batches == [[0, 1], [2, 3], [4]]  # rows 3 + 2, then 2 + 1 (4 more would make 7), then 4
    assert token_budget_batches([50], max_rows=2, max_tokens=10_000, sizes=[6]) == [[0]]  # too big: alone


def test_an_out_of_memory_trial_is_recorded_with_its_shape_and_estimate(tmp_path, monkeypatch):
    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(Trainer, "training_step", out_of_memory)
    summary = _trial(tmp_path, "run")
    assert summary.status == "oom" and summary.sequence_length == 128
    assert summary.stop_reason.startswith("out of memory at micro-batch 8 x 128 tokens")
    assert summary.memory_estimate["total_mb"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "oom"


def test_auto_micro_batch_retries_at_half_the_micro_batch_with_the_same_effective_batch(tmp_path, monkeypatch):
    sizes = []
    original = Trainer.training_step

    def fits_two(self, *args, **kwargs):
        sizes.append((self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps))
        if self.args.per_device_train_batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", fits_two)
    summary = _trial(tmp_path, "run", "train.auto_micro_batch=true", "train.grad_accum_steps=1")
    assert summary.status == "completed" and summary.steps == 4
    assert summary.micro_batch["per_device_batch_size"] * summary.micro_batch["grad_accum_steps"] == 8
    assert sizes[0] == (8, 1) and sizes[1] == (4, 2) and set(sizes[2:]) == {(2, 4)}  # really retried, then trained
    assert len(summary.micro_batch["auto_retries"]) == 2 and "retried at micro-batch 2" in \
        summary.micro_batch["auto_retries"][-1]


def test_an_out_of_memory_trial_of_a_sweep_is_a_failed_trial_and_the_others_complete(tmp_path, dialogues):
    args = ["-m", *TINY, *EMOLLM, f"data.path={dialogues}", "hydra/sweeper=ftharness",
            "hydra.sweeper.sampler.name=grid", "optim.lr=choice(1e-3,2e-3,3e-3)"]
    result = subprocess.run([sys.executable, "-c", INJECT_OOM, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BASE_EVALS=1" in result.stdout  # three trials, one base evaluation
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    table = (sweep_dir / "results.md").read_text()
    assert table.count("| completed |") == 2 and table.count("| oom |") == 1
    assert "out of memory at micro-batch" in table
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    assert sorted(s["status"] for s in summaries) == ["completed", "completed", "oom"]
    assert "out of memory at micro-batch" in (sweep_dir / "report.html").read_text()


def test_the_sweeper_reads_an_oom_summary_as_an_infeasible_result_with_its_reason(tmp_path):
    summary = {"status": "oom", "stop_reason": "out of memory at micro-batch 8"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    job = finished_job(tmp_path)
    state, values, attrs = job_outcome(job, ["eval_loss"])
    assert state.name == "PRUNED" and values is None and attrs["status"] == "oom"  # infeasible, not failed
    assert attrs["reason"] == "out of memory at micro-batch 8"


def test_the_estimate_is_within_a_factor_of_the_measured_peak_for_the_tiny_model(tmp_path, dialogues):
    result = run_cli(*TINY, *EMOLLM, f"data.path={dialogues}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next((tmp_path / "outputs" / "runs").glob("*/*/summary.json")).read_text())
    ratio = summary["memory_estimate"]["total_mb"] / summary["peak_memory_mb"]
    assert 0.7 < ratio < 1.5, (summary["memory_estimate"], summary["peak_memory_mb"])


@pytest.mark.slow
def test_the_estimate_is_within_a_factor_of_the_measured_peak_for_the_default_model(tmp_path, dialogues):
    result = run_cli("tracker.mode=disabled", "data=emollm", f"data.path={dialogues}", "data.eval_size=4",
                     "data.max_length=128", "train.per_device_batch_size=4", "train.max_steps=2",  # rows are cut:
                     "train.eval_steps=0", "eval.max_new_tokens=0", cwd=tmp_path)  # batches of the estimated shape
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next((tmp_path / "outputs" / "runs").glob("*/*/summary.json")).read_text())
    ratio = summary["memory_estimate"]["total_mb"] / summary["peak_memory_mb"]
    assert 0.7 < ratio < 2.0, (summary["memory_estimate"], summary["peak_memory_mb"])


def test_the_7b_presets_fit_40_gb_and_the_default_micro_batch_says_how_to_fit():
    deepseek = LlamaConfig(hidden_size=4096, num_hidden_layers=30, intermediate_size=11008, num_attention_heads=32,
                           num_key_value_heads=32, vocab_size=102400)  # deepseek-llm-7b-chat's shape
    gpu = Hardware("cuda", "bf16", "bfloat16", "bfloat16", "sdpa")
    for preset in ("deepseek-llm-7b-chat", "llama-2-7b-chat"):
        cfg = compose_config(f"model={preset}", "data.max_length=2048", tiny=False)
        assert cfg.lora.quantization == "4bit" and cfg.optim.name == "paged_adamw_8bit"
        assert (cfg.train.per_device_batch_size, cfg.train.grad_accum_steps, cfg.train.gradient_checkpointing) == \
            (2, 8, True)
        assert estimate_memory(cfg, gpu, deepseek, free=40e9).fits
    crowded = compose_config("model=deepseek-llm-7b-chat", "data.max_length=2048", "train.per_device_batch_size=8",
                             "train.gradient_checkpointing=false", tiny=False)
    estimate = estimate_memory(crowded, gpu, deepseek, free=40e9)
    assert not estimate.fits and "GB short; would fit with train.gradient_checkpointing=true" in estimate.line()
    assert "train.grad_accum_steps=" in estimate.line()  # a smaller micro-batch keeps the effective batch


def test_the_estimate_counts_the_scores_eager_attention_keeps():
    """heads x length^2 scores a row and layer (fp32 softmax and its bf16 copy): 16 x 2048^2 x 6 B x 2 rows x 30
    layers = 24 GB, which sdpa does not keep; with checkpointing one layer's worth."""
    config = LlamaConfig(hidden_size=2048, num_hidden_layers=30, intermediate_size=5632, num_attention_heads=16,
                         vocab_size=32000)
    cfg = compose_config("data.max_length=2048", "train.per_device_batch_size=2", tiny=False)
    parts = {kind: estimate_memory(cfg, Hardware("cpu", "bf16", "bfloat16", "float32", kind), config).parts
             for kind in ("sdpa", "eager")}
    assert parts["eager"]["activations"] - parts["sdpa"]["activations"] == 2 * 16 * 2048 ** 2 * 6 * 30
    checkpointed = compose_config("data.max_length=2048", "train.per_device_batch_size=2",
                                  "train.gradient_checkpointing=true", tiny=False)
    with_checkpointing = {kind: estimate_memory(checkpointed, Hardware("cpu", "bf16", "bfloat16", "float32", kind),
                                                config).parts["activations"] for kind in ("sdpa", "eager")}
    assert with_checkpointing["eager"] - with_checkpointing["sdpa"] == 2 * 16 * 2048 ** 2 * 6


@pytest.mark.parametrize("case", ["latin1_file", "folder_without_model", "too_few_eval_dialogues"])
def test_bad_input_stops_with_one_line(tmp_path, dialogues, case):
    if case == "latin1_file":
        bad = tmp_path / "chats.json"
        bad.write_bytes('[{"conversation": [{"input": "caf\u00e9", "output": "ok"}]}]'.encode("latin-1"))
        args, expected = [f"data.path={bad}", "data=emollm"], f"{bad}:1: not UTF-8 text (byte 0xe9 at column 34"
    elif case == "folder_without_model":
        (tmp_path / "empty_model").mkdir()
        args, expected = [f"model.name_or_path={tmp_path / 'empty_model'}"], "holds no transformers model"
    else:
        args = [f"data.path={dialogues}", "data=emollm", "data.eval_size=2", "data.test_size=0", "eval.num_prompts=3"]
        expected = "eval.num_prompts=3 held-out dialogues asked for, the eval split has 2"
    result = run_cli(*TINY, *args, cwd=tmp_path)
    assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
    assert len([line for line in result.stderr.splitlines() if line.startswith("ftharness")]) == 1
    assert "Traceback" not in result.stderr
