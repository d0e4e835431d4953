"""The real CLI in a subprocess on the tiny model: a run, a grid sweep with a failing job, input errors."""

import csv
import json
import re

import pytest

from conftest import TINY, only_run_dir, read_jsonl, run_cli, swanlab_series
from ftharness.report.sweep_report import build, markdown_section


def test_one_run_writes_results_and_swanlab_curves(tmp_path):
    result = run_cli(*[o for o in TINY if not o.startswith("tracker.")], "optim.lr=2e-3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["params"]["optim.lr"] == "2e-3"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]

    series = swanlab_series(tmp_path / "outputs" / "swanlog" / "default", summary["run_name"])
    for key in ("loss", "grad_norm", "learning_rate"):
        assert series[f"train/{key}"] == [(r["step"], pytest.approx(r[key])) for r in train]
    assert [step for step, _ in series["eval/loss"]] == [0, 2, 4]


def test_grid_sweep_tabulates_every_job_and_survives_a_failing_one(tmp_path):
    result = run_cli("-m", *TINY, "lora.r=2,0", "optim.lr=1e-3,2e-3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    # sorted by the first swept key; values to 3 significant digits
    assert [(r["run"], r["lora.r"], r["optim.lr"]) for r in rows] == [
        ("2", "0", "1e-3"), ("3", "0", "2e-3"), ("0", "2", "1e-3"), ("1", "2", "2e-3")]
    assert [r["state"] for r in rows] == ["failed", "failed", "completed", "completed"]
    assert all(r["reason"].startswith("ConfigError: lora.r=0") for r in rows[:2])
    assert all(float(r["final_loss"]) > 0 and float(r["wall_time_s"]) > 0 for r in rows[2:])
    markdown = (sweep_dir / "results.md").read_text()
    assert markdown.count("\n") == 2 + 4 and "| run | lora.r | optim.lr | state | reason |" in markdown
    assert "| failed | ConfigError: lora.r=0" in result.stdout
    names = {json.loads((sweep_dir / str(i) / "summary.json").read_text())["run_name"] for i in range(4)}
    assert names == {"r=2,lr=1e-3", "r=2,lr=2e-3", "r=0,lr=1e-3", "r=0,lr=2e-3"}
    assert "<h1>default: lora.r, optim.lr</h1>" in (sweep_dir / "report.html").read_text()  # every swept key
    assert "swept keys `lora.r`, `optim.lr` (colours: `lora.r`)" in markdown_section(build(sweep_dir))


def test_the_console_of_a_sweep_shows_a_line_per_trial_start_and_end_and_one_table(tmp_path):
    result = run_cli("-m", *[o for o in TINY if not o.startswith("tracker.")], "hydra/sweeper=ftharness",
                     "hydra.sweeper.sampler.name=grid", "optim.lr=choice(1e-3,2e-3)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    console, lines = result.stdout + result.stderr, result.stdout.splitlines()
    names = []
    for number in (0, 1):
        started = next(i for i, line in enumerate(lines) if line.startswith(f"trial {number} ({number + 1}/2)  "))
        names.append(lines[started].split("  ")[1])
        assert re.fullmatch(rf"trial {number} \({number + 1}/2\)  completed  eval_loss [\d.]+  [\d.]+ s",
                            lines[started + 1])
    assert console.count("swanlab watch") == 1 and "curves: swanlab watch outputs/swanlog/default" in lines
    for noise in ("{'loss'", "{'eval_loss'", "FutureWarning", "kernels", "env_set", "HYDRA", "Traceback"):
        assert noise not in console, noise
    assert "train:" in result.stderr and "eval:" in result.stderr  # the progress bars (tqdm on stderr)
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    recorded = [json.loads((sweep_dir / str(job) / "summary.json").read_text())["run_name"] for job in (0, 1)]
    assert names == recorded and len(set(names)) == 2  # the run names of ftharness/ui/tracking.py
    assert result.stdout.count("| run | optim.lr | state | reason | eval_loss |") == 1  # one table, printed once
    assert (sweep_dir / "results.md").read_text() in result.stdout
    assert f"best:   outputs/multirun/default/{sweep_dir.name}/best.json" in lines
    assert f"report: outputs/multirun/default/{sweep_dir.name}/report.html" in lines
    assert sorted(p.name for p in sweep_dir.iterdir() if p.suffix in (".csv", ".md", ".json", ".html")) == [
        "best.json", "report.html", "results.csv", "results.md", "study.json"]
    log = (sweep_dir / "0" / "__main__.log").read_text()  # everything still goes to the job's log file
    assert "loading base model" in log and "swanlab watch" in log


def test_verbose_shows_the_job_log_on_the_console_too(tmp_path):
    quiet = run_cli(*TINY, "train.max_steps=1", cwd=tmp_path)
    loud = run_cli(*TINY, "train.max_steps=1", "verbose=true", cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr[-3000:] + loud.stderr[-3000:]
    assert "loading base model" not in quiet.stdout + quiet.stderr and "loading base model" in loud.stdout
    assert re.search(r"^run  .*\nrun  completed  eval_loss [\d.]+  [\d.]+ s$", quiet.stdout, re.M)


def test_a_list_of_target_modules_survives_the_command_line(tmp_path):
    result = run_cli(*TINY, "train.max_steps=1", "lora.target_modules=[q_proj,v_proj]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = json.loads((only_run_dir(tmp_path) / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("override,message", [
    ("lora.r=0", "lora.r=0 is invalid: must lie in [1, inf]"),
    ("lora.dropout=1.5", "lora.dropout=1.5 is invalid: must lie in [0, 1)"),
    ("optim.lr=-1", "optim.lr=-1.0 is invalid: must lie in (0, 10]"),
    ("lora.target_modules=[q_proj,x_proj]", "lora.target_modules='x_proj' is invalid"),
    ("data.path=missing.jsonl", "data.path='missing.jsonl' is invalid: an existing file"),
])
def test_invalid_values_fail_fast_with_one_line_and_leave_no_run(tmp_path, override, message):
    result = run_cli(*TINY, override, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"ftharness: error: {message}")
    assert "loading base model" not in result.stdout + result.stderr
    assert not list((tmp_path / "outputs" / "runs" / "default").iterdir())


def test_unknown_key_is_refused_by_the_schema(tmp_path):
    result = run_cli(*TINY, "lora.rank=8", cwd=tmp_path)
    assert result.returncode == 1 and "Key 'rank' not in 'LoraConfig'" in result.stderr


def test_a_malformed_data_row_names_file_and_line(tmp_path):
    data = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text("\n".join([json.dumps(good)] * 3 + ['{"messages": [}']) + "\n")
    result = run_cli(*TINY, f"data.path={data}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"ftharness: error: {data}:4: not valid JSON")
