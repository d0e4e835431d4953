"""Merging a run's adapter into a standalone model, and comparing base and fine-tuned answers, on the tiny model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import compose_config, only_run_dir, run_cli
from ftharness import compare, merge
from ftharness.data.synthetic import DECIMAL_PROMPTS
from ftharness.model.adapters import each_adapter_in_turn, load_adapted_base
from ftharness.model.loading import forget_base, load_unquantized_base
from ftharness.model.merge import read_adapter_run
from ftharness.report.answers import read_prompts
from ftharness.trial.recipe import run_trial

IDS = torch.arange(3, 60).unsqueeze(0)
# A high learning rate moves the adapters far enough from zero for their effect to show in the logits.
TRAINED = ["optim.lr=1e-2"]


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def _train(run_dir: Path, name: str, *overrides: str) -> Path:
    """A finished run directory laid out as `python -m ftharness` leaves it (config.yaml included)."""
    run_dir.mkdir(parents=True)
    cfg = compose_config(*TRAINED, *overrides)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    run_trial(cfg, run_dir, name, {})
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep directory of tiny runs: two LoRA adapters, a QLoRA adapter and a full fine-tuning run."""
    root = tmp_path_factory.mktemp("sweep")
    forget_base()
    _train(root / "0", "lr=1e-2")
    _train(root / "1", "r=4", "lora.r=4", "seed=7")
    _train(root / "2", "lora=qlora", "lora=qlora", "train.max_steps=2")
    _train(root / "3", "lora=none", "lora=none", "train.max_steps=1")
    forget_base()
    return root


def _one_line_error(capsys, main, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_merged_model_loads_without_peft_and_matches_the_adapter(sweep, capsys):
    run = read_adapter_run(sweep / "0")
    merge.main([str(run.path)])
    merged_dir = run.path / "merged"  # the default output
    assert "unquantized" in capsys.readouterr().out

    files = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(name.startswith("adapter_") for name in files)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert not any("lora" in name for name in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True).endswith("<|im_start|>assistant\n")

    adapted = _logits(load_adapted_base(run.cfg, run.adapter_dir, "float32"))
    base = _logits(load_unquantized_base(run.cfg, "float32"))
    merged_logits = _logits(merged)
    assert (merged_logits - adapted).abs().max() < 1e-4
    assert (merged_logits - base).abs().max() > 1e-2


def test_a_qlora_run_merges_onto_an_unquantized_base(sweep, tmp_path, capsys):
    run = read_adapter_run(sweep / "2")
    assert run.quantized
    merge.main([str(run.path), "--output", str(tmp_path / "fp32")])
    assert "4bit base, which cannot be merged" in capsys.readouterr().out
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32")
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert not any(p.__class__.__name__ == "Params4bit" for p in merged.parameters())
    adapted = _logits(load_adapted_base(run.cfg, run.adapter_dir, "float32"))
    assert (_logits(merged) - adapted).abs().max() < 1e-4
    assert (_logits(merged) - _logits(load_unquantized_base(run.cfg, "float32"))).abs().max() > 1e-2

    merge.main([str(run.path), "--output", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert (_logits(half) - adapted).abs().max() < 0.05


def test_adapters_swapped_on_one_base_give_what_fresh_loads_give(sweep):
    runs = [read_adapter_run(sweep / job) for job in ("0", "1", "2", "0")]
    base = load_unquantized_base(runs[0].cfg, "float32")
    plain = _logits(base)
    for adapted, run in zip(each_adapter_in_turn(base, [r.adapter_dir for r in runs]), runs):
        fresh = _logits(load_adapted_base(run.cfg, run.adapter_dir, "float32"))
        assert torch.allclose(_logits(adapted), fresh, atol=1e-6)
        assert not torch.allclose(fresh, plain, atol=1e-3)
    assert torch.equal(_logits(base), plain)
    assert not any("lora" in name for name, _ in base.named_modules())


def test_compare_writes_a_column_per_model_and_a_self_contained_page(sweep, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Is 9.11 larger than 9.9?", "<b>a | b</b> & \"c\""]))
    output = tmp_path / "report" / "compare.md"
    compare.main([str(sweep), "--prompts", str(prompts), "--max-new-tokens", "3", "--output", str(output)])
    assert f"wrote {output}" in capsys.readouterr().out

    table = [line for line in output.read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| prompt | base | lr=1e-2 | r=4 | lora=qlora |"  # job 3 is full fine-tuning: no adapter
    assert len(table) == 2 + 2 and "<b>a \\| b</b>" in table[3]
    assert all(line.count(" | ") == 4 for line in table[2:])
    page = output.with_suffix(".html").read_text()
    assert page.count("<tr>") == 3 and "<th>lora=qlora</th>" in page
    assert "&lt;b&gt;a | b&lt;/b&gt; &amp; &quot;c&quot;" in page and "<b>" not in page
    assert "http://" not in page and "https://" not in page
    assert "QLoRA adapters are applied to the unquantized base" in page


def test_prompt_files_are_json_lists_or_one_prompt_per_line(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("first prompt\n\n  second prompt  \n")
    assert read_prompts(text) == ["first prompt", "second prompt"]
    listed = tmp_path / "prompts.json"
    listed.write_text('["one", "two, with a comma"]')
    assert read_prompts(listed) == ["one", "two, with a comma"]


@pytest.mark.parametrize("main", [merge.main, compare.main], ids=["merge", "compare"])
def test_directories_without_a_usable_adapter_fail_with_one_clear_line(sweep, tmp_path, capsys, main):
    assert "not an ftharness run directory" in _one_line_error(capsys, main, str(tmp_path))
    assert "no such directory" in _one_line_error(capsys, main, str(tmp_path / "missing"))
    assert "full fine-tuning run" in _one_line_error(capsys, main, str(sweep / "3"))
    failed = tmp_path / "failed"
    shutil.copytree(sweep / "0", failed, ignore=shutil.ignore_patterns("merged"))
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    assert "not a finished run (status failed: RuntimeError: boom)" in _one_line_error(capsys, main, str(failed))
    classifier = _train(tmp_path / "classifier", "cls", "task=classification", "model=tiny", "train.max_steps=1")
    capsys.readouterr()  # the training's own output
    assert "a classification run" in _one_line_error(capsys, main, str(classifier))


def test_compare_refuses_runs_of_different_base_models(sweep, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(sweep / "0", other, ignore=shutil.ignore_patterns("merged"))
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "model_path": "/models/another"}))
    line = _one_line_error(capsys, compare.main, str(sweep / "0"), str(other))
    assert "different base models" in line and "/models/another" in line


def test_the_real_cli_reports_a_full_finetuning_run_in_one_line(sweep):
    for module in ("ftharness.merge", "ftharness.compare"):
        result = subprocess.run([sys.executable, "-m", module, str(sweep / "3")], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"{module}: error: {sweep / '3'} is a full fine-tuning run: it has no adapter; its model/ folder is "
            "already a standalone model (AutoModelForCausalLM.from_pretrained)"]


@pytest.mark.slow
def test_merge_and_compare_on_the_default_model(tmp_path):
    """A 2-step run of the embedded SmolLM2 through the real CLI, then merge and compare on it."""
    result = run_cli("tracker.mode=disabled", "data.train_size=8", "data.eval_size=4", "data.test_size=4",
                     "train.max_steps=2", "train.per_device_batch_size=2", "optim.lr=1e-3", "eval.max_new_tokens=0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    merge.main([str(run_dir), "--dtype", "float32"])  # the run's own bf16 base (CPUs with bf16) rounds the sums
    compare.main([str(run_dir), "--max-new-tokens", "12", "--output", str(tmp_path / "c.md")])

    run = read_adapter_run(run_dir)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Which is larger, 4.7 or 4.65?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    adapted = _logits(load_adapted_base(run.cfg, run.adapter_dir, "float32"), ids)
    assert (_logits(merged, ids) - adapted).abs().max() < 1e-3
    table = [line for line in (tmp_path / "c.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == f"| prompt | base | {run.name} |" and len(table) == 2 + len(DECIMAL_PROMPTS)
    assert all(line.split(" | ")[1].strip() for line in table[2:])  # the base model answers every prompt
