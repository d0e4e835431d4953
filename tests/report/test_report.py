"""The comparison report: built at the end of real tiny-model sweeps (an Optuna grid study with a diverging
run, a plain Hydra grid with a failing job), the study write-up, the findings' verdicts, and every preset in
sweeps/ running a couple of steps."""

import csv
import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, DIVERGING, EXPLODING_ALPHA, FIXTURES, TINY, run_cli, swanlab_project
from ftharness.config.schema import SWEEPS_DIR, register_schema
from ftharness.config.validation import validate
from ftharness.contract import TrialSummary
from ftharness.model.hardware import device_name
from ftharness.report.__main__ import main as report_main
from ftharness.report.figures import by_value_figure, curves_figure
from ftharness.report.findings import FINDINGS, HELD, verdict
from ftharness.report.results import label_runs
from ftharness.report.runs import Run
from ftharness.report.seeds import group_by_value
from ftharness.report.sweep_report import build
from ftharness.ui.formatting import format_value

SWEEP = ["-m", *TINY, "eval.max_new_tokens=0"]
COMPARISONS = ["lr", "rank", "alpha", "dropout", "target_modules", "epochs", "batch_size", "grad_accum", "rank_lr"]


def only_sweep_dir(cwd: Path, name: str) -> Path:
    sweep_dir, = (cwd / "outputs" / "multirun" / name).iterdir()
    return sweep_dir


def labelled_lines(axis) -> list:
    return [line for line in axis.get_lines() if not line.get_label().startswith("_")]


def assert_self_contained(page: str) -> None:
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, re.I)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


@pytest.fixture(scope="module")
def diverged_study(tmp_path_factory) -> Path:
    """sweep=alpha where alpha EXPLODING_ALPHA diverges and alpha 16 does not, tracked by SwanLab; one
    seed per value, so each value is one run (as before seeds)."""
    cwd = tmp_path_factory.mktemp("study")
    tracked = [o for o in SWEEP if not o.startswith("tracker.mode")]
    result = run_cli(*tracked, "sweep=alpha", *DIVERGING, "hydra.sweeper.seeds=1", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_sweep_dir(cwd, "alpha-study")


def test_a_study_sweep_ends_with_a_report_of_every_run(diverged_study):
    for name in ("report.html", "results.csv", "results.md", "best.json", "curves.png", "by_value.png",
                 "optuna_history.png", "optuna_slices.png", "optuna_parallel_coordinates.png"):
        assert (diverged_study / name).stat().st_size > 0, name
    report = build(diverged_study)
    assert report.key == "lora.alpha" and [r.label for r in report.runs] == ["16", EXPLODING_ALPHA]
    assert [r.state for r in report.runs] == ["completed", "diverged"]
    for axis in curves_figure(report.key, report.runs).axes[:4]:  # train loss, grad_norm, lr, eval loss
        assert [line.get_label() for line in labelled_lines(axis)] == ["16", f"{EXPLODING_ALPHA} (diverged)"]
    assert len(labelled_lines(by_value_figure(report.key, report.runs).axes[0])) == 3  # final / median / max
    rows = report.table
    assert rows == list(csv.DictReader((diverged_study / "results.csv").open()))  # the one table, also the report's
    assert [r["lora.alpha"] for r in rows] == ["16", EXPLODING_ALPHA]
    assert rows[0]["state"] == "completed" and rows[1]["state"] == "diverged"
    assert rows[1]["reason"].startswith("diverged at step")
    assert all(rows[0][column] for column in ("eval_loss", "test_accuracy", "final_loss", "final_grad_norm", "steps",
                                              "wall_time_s", "tokens_per_s", "peak_memory_mb"))


def test_the_runs_of_a_comparison_share_one_swanlab_project_named_by_their_value(diverged_study):
    project, names = swanlab_project(diverged_study.parents[2] / "swanlog" / "alpha-study")
    assert project == "ftharness-alpha-study" and names == sorted([f"alpha={EXPLODING_ALPHA}", "alpha=16"])


def test_the_html_page_is_self_contained_and_flags_the_diverged_run(diverged_study):
    page = (diverged_study / "report.html").read_text()
    assert_self_contained(page)
    assert page.count('<tr class="flagged">') == 1 and "<td>diverged</td><td>diverged at step" in page
    assert "The study's finding: LoRA alpha" in page and "of trials on cpu (" in page


def test_the_study_write_up_links_figures_it_copied(diverged_study, tmp_path):
    doc = tmp_path / "docs" / "study.md"
    report_main(["--doc", str(doc), str(diverged_study)])
    text = doc.read_text()
    assert "| LoRA alpha |" in text and "bash scripts/study.sh" in text
    # where the trials ran: wall times compare only between sections on the same hardware
    assert re.search(rf"min of trials on cpu \({re.escape(device_name('cpu'))}\), (fp32|bf16)\.", text)
    links = re.findall(r"!\[[^]]*]\(([^)]+)\)", text)
    assert links and all((doc.parent / link).exists() for link in links)


def test_updating_the_write_up_replaces_only_the_comparisons_run_again(diverged_study, tmp_path):
    doc = tmp_path / "docs" / "study.md"
    report_main(["--doc", str(doc), str(diverged_study)])
    alpha_section = doc.read_text().split("\n## ", 1)[1]
    earlier = ("# The study, reproduced\n\nan earlier header\n\n| comparison | verdict | wall time | runs |\n"
               "|---|---|---|---|\n| learning rate | reproduced | 15.9 min | 5 runs |\n"
               "| LoRA alpha | not reproduced | 7.2 min | 2 runs |\n\n## learning rate\n\nthe lr section\n"
               "\n## LoRA alpha\n\nthe old alpha section\n")
    doc.write_text(earlier)
    report_main(["--doc", str(doc), "--update", str(diverged_study)])
    header, lr_section, new_alpha = doc.read_text().split("\n## ")
    assert lr_section == "learning rate\n\nthe lr section\n" and new_alpha == alpha_section
    assert "| learning rate | reproduced | 15.9 min | 5 runs |" in header
    assert "| LoRA alpha | not reproduced" not in header
    alpha_minutes = float(re.search(r"\| LoRA alpha \| [^|]+ \| ([\d.]+) min", header).group(1))
    assert f"took {15.9 + alpha_minutes:.1f} min in all" in header
    assert "The sections of learning rate are kept from an earlier run of the study" in header


def test_a_plain_grid_gets_a_report_too_with_the_failed_job_flagged(tmp_path):
    result = run_cli(*SWEEP, "lora.r=2,0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = build(only_sweep_dir(tmp_path, "default"))
    assert [(r.label, r.state) for r in report.runs] == [("0", "failed"), ("2", "completed")]
    assert report.table[0]["state"] == "failed" and report.table[0]["reason"].startswith("ConfigError: lora.r=0")
    assert_self_contained((only_sweep_dir(tmp_path, "default") / "report.html").read_text())


def _run(label: str, losses, grad_norms, evals, state="completed", **summary) -> Run:
    train = [{"step": i + 1, "loss": loss, "grad_norm": grad_norm}
             for i, (loss, grad_norm) in enumerate(zip(losses, grad_norms))]
    run = Run(label, {}, state, summary=TrialSummary.from_dict(summary), train=train,
              evals=[{"step": 10 * i, "loss": e, "epoch": i} for i, e in enumerate(evals)])
    run.label, run.number = label, float(label)
    return run


def test_no_figure_legend_covers_a_panel_and_labels_have_3_significant_digits():
    """Eight runs of a study over two keys, lr and modules as sweep=default draws them: long labels."""
    lrs = ["1e-05", "0.0003487802515319414", "0.00109", "0.042", "2e-05", "5e-4", "7e-3", "3e-3"]
    runs = []
    for i, lr in enumerate(lrs):
        run = _run("1", [1.0, 0.5, 0.4], [1.0, 2.0, 1.5], [1.0, 0.6], state="pruned" if i % 2 else "completed")
        run.values = {"optim.lr": lr, "lora.target_modules": "[q_proj,v_proj]" if i % 2 else "all-linear"}
        runs.append(run)
    runs = label_runs(runs, ["optim.lr", "lora.target_modules"])
    assert [r.label for r in runs][:3] == ["lr=1e-5,target_modules=all-linear", "lr=2e-5,target_modules=all-linear",
                                           "lr=3.49e-4,target_modules=[q_proj,v_proj]"]
    for figure in (curves_figure("optim.lr", runs), by_value_figure("optim.lr", runs)):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        legend, = figure.legends
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(axis.get_window_extent(renderer)) for axis in figure.axes)


@pytest.mark.parametrize("value,text", [(0.0003487802515319414, "3.49e-4"), ("0.00109", "1.09e-3"), (0.05, "0.05"),
                                        (4.56789, "4.57"), (16, "16"), ("1024", "1024"), (1234.56, "1235"),
                                        (None, ""), ("all-linear", "all-linear"),
                                        ("[q_proj,v_proj]", "[q_proj,v_proj]")])
def test_one_formatter_writes_numbers_to_3_significant_digits(value, text):
    assert format_value(value) == text


def test_the_learning_rate_finding_is_judged_from_the_curves():
    runs = [_run("2e-06", [1.0, 0.99, 0.98], [1.0, 1.0, 1.0], [1.0, 0.98]),
            _run("0.001", [1.0, 0.3, 0.1], [5.0, 1.0, 0.5, 0.4, 0.5, 0.4], [1.0, 0.1]),
            _run("0.01", [1.0, 9.0], [2.0, 90.0], [1.0], state="diverged")]
    checks = FINDINGS["optim.lr"].checks(group_by_value(runs))
    assert [c.outcome for c in checks] == [HELD] * 4 and verdict(checks) == "reproduced"
    runs[0].evals[-1]["loss"] = 0.5  # the lowest rate now moves the eval loss by half
    assert verdict(FINDINGS["optim.lr"].checks(group_by_value(runs))) == "partly reproduced"
    assert verdict([]) == "not checked: no finished runs"


# One preset of each kind (every preset composes and parses in tests/sweep/test_sweeper.py; the comparisons differ from
# lr only in the swept key): TPE pruned on the training loss, a seeded comparison grid, epochs on noisy labels with an
# eval per epoch, a multi-objective study.
@pytest.mark.parametrize("preset", ["default", "lr", "epochs", "pareto"])
def test_a_preset_of_each_kind_runs_a_trial_of_two_steps_on_the_tiny_model(preset, tmp_path):
    result = run_cli(*SWEEP, f"sweep={preset}", "train.max_steps=2", "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir, = (tmp_path / "outputs" / "multirun").glob("*/*")
    report = build(sweep_dir)
    confirmations = 2 if preset == "default" else 0  # its one point again with seeds 43 and 44
    assert len(report.runs) == 1 + confirmations and all(run.summary.steps == 2 for run in report.runs)
    assert (sweep_dir / "report.html").exists()


@pytest.mark.parametrize("preset", COMPARISONS)
def test_each_comparison_sweeps_the_keys_of_a_finding_and_takes_a_real_model_and_emollm_file(preset):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            f"sweep={preset}", "model=deepseek-llm-7b-chat", "data=emollm", f"data.path={FIXTURES / 'emollm.json'}"])
    keys = " x ".join(sorted(cfg.hydra.sweeper.params))  # one key, or rank_lr's three
    assert keys in FINDINGS and cfg.hydra.sweeper.sampler.name == "grid" and cfg.hydra.sweeper.pruner.name == "none"
    assert cfg.model.name_or_path == "deepseek-ai/deepseek-llm-7b-chat" and cfg.data.format == "emollm"
    validate(cfg)


def test_every_finding_of_the_study_has_its_comparison_preset():
    swept = {" x ".join(sorted(OmegaConf.load(SWEEPS_DIR / f"{preset}.yaml").hydra.sweeper.params))
             for preset in COMPARISONS}  # several keys: a finding of them together
    assert swept == set(FINDINGS)


def test_a_comparison_runs_on_a_users_emollm_file(tmp_path):
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps(json.loads((FIXTURES / "emollm.json").read_text()) * 30))
    by_epoch = [o for o in SWEEP if not o.startswith("train.max_steps")]  # the preset trains for train.epochs
    result = run_cli(*by_epoch, "sweep=epochs", "data=emollm", f"data.path={chats}", "train.epochs=choice(1,2)",
                     "hydra.sweeper.seeds=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = build(only_sweep_dir(tmp_path, "epochs-study"))
    assert [(r.label, r.state, r.summary.data["format"]) for r in report.runs] == [
        ("1", "completed", "emollm"), ("2", "completed", "emollm")]
    assert [e["epoch"] for e in report.runs[1].evals] == [0, 1, 2]  # eval loss after every epoch
    assert report.finding["comparison"] == "epochs"
