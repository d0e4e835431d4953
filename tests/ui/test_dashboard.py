"""Reading a sweep on SwanLab's board: runs coloured by their value on the report's colormap, short names,
outcomes that are not "Crashed" when a trial was pruned, dotted config keys; read back through the board's
own HTTP API (`swanlab watch` on a free loopback port) and in a real browser (headless Chromium)."""

import os
import sys
from pathlib import Path

import pytest
from matplotlib import colormaps
from matplotlib.colors import to_hex

from conftest import REPO, TINY, compose_config, run_cli
from ftharness.config.overrides import parse_sweep
from ftharness.report.figures import curves_info
from ftharness.report.results import results_of
from ftharness.report.runs import Run
from ftharness.ui.board import experiments, serve_board
from ftharness.ui.colours import Scale, colours_for, sweep_scale
from ftharness.ui.formatting import format_value
from ftharness.ui.tracking import SWEEP_ENV, SWEPT_KEYS_ENV, Tracker, board_config, run_name, sweep_colour

sys.path.insert(0, str(REPO / "scripts"))
from screenshots import CHROMIUM, browser_page

VIRIDIS = [to_hex(colormaps["viridis"](i / 255)) for i in range(256)]
LRS = ["1e-4", "1e-3", "1e-2"]
# A grid study of three learning rates with the median pruner: trial 0 (lr 1e-2, the grid's seeded first point)
# completes, the two lower rates fall behind it at step 2 and are pruned.
STUDY = ["-m", *(o for o in TINY if not o.startswith("tracker.")),
    "train.max_steps=6", "eval.max_new_tokens=0", "sweep=lr", "hydra.sweeper.seeds=1",
    f"optim.lr=choice({','.join(LRS)})",
    "hydra.sweeper.pruner.name=median", "+hydra.sweeper.pruner.options.n_startup_trials=1",
    "+hydra.sweeper.pruner.options.n_warmup_steps=0"]


def viridis_position(colour: str) -> int:
    """Where a colour lies along viridis (0..255), by the nearest of its 256 entries."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return min(range(256), key=lambda i: sum((int(VIRIDIS[i][j:j + 2], 16) - c) ** 2 for j, c in zip((1, 3, 5), rgb)))


# ---- the colour mapping and the names, on their own ----

def test_learning_rates_take_viridis_on_a_log_scale():
    scale = Scale("optim.lr", 1e-5, 1e-1, log=True)
    positions = [viridis_position(scale.colour(lr)) for lr in (1e-5, 1e-3, 1e-1)]
    assert positions[0] == 0 and abs(positions[1] - positions[2] / 2) <= 2  # 1e-3 half-way up, not near the bottom
    assert Scale("lora.r", 8, 64).colour(36) == Scale("lora.r", 8, 64).colour("36")  # override text or number
    assert colours_for("optim.lr", [2e-6, 2e-4, 2e-2]) == [scale_colour for scale_colour in
                                                           map(Scale("optim.lr", 2e-6, 2e-2, log=True).colour,
                                                               [2e-6, 2e-4, 2e-2])]


def test_categorical_values_take_a_qualitative_palette_in_the_order_of_their_choices():
    tab10 = [to_hex(colormaps["tab10"](i)) for i in range(3)]
    values = ["all-linear", "attention", "[q_proj,v_proj]", "all-linear"]
    assert colours_for("lora.target_modules", values) == [tab10[0], tab10[1], tab10[2], tab10[0]]
    assert len(set(colours_for("lora.r", [8, 8, 8]))) == 3  # one value only: the runs are still told apart


def test_a_sweeps_values_give_the_scale_its_jobs_colour_by():
    assert sweep_scale("optim.lr", parse_sweep("tag(log, interval(1e-5, 5e-2))")) == Scale("optim.lr", 1e-5, 5e-2, True)
    assert sweep_scale("lora.r", parse_sweep("8,16,64")) == Scale("lora.r", 8, 64, log=False)
    modules = parse_sweep("choice(all-linear, attention, [q_proj,v_proj])")
    assert sweep_scale("lora.target_modules", modules).choices == ["all-linear", "attention", "[q_proj,v_proj]"]
    cfg = compose_config("lora.target_modules=[q_proj,v_proj]")
    announced = {"scale": Scale("lora.target_modules", choices=["all-linear", "[q_proj,v_proj]"]).as_dict()}
    assert sweep_colour(cfg, announced) == to_hex(colormaps["tab10"](1))
    assert sweep_colour(cfg, {}) is None  # a single run: SwanLab picks


def test_the_report_and_the_board_colour_a_value_alike():
    runs = results_of([Run(f"trial {i}", {"optim.lr": lr}, "completed", train=[{"step": 1, "loss": 1.0}])
                       for i, lr in enumerate(LRS)]).runs
    lines = curves_info("optim.lr", runs).panels[0].lines
    assert [line.colour for line in lines] == [Scale("optim.lr", 1e-4, 1e-2, log=True).colour(lr) for lr in LRS]


@pytest.mark.parametrize("text,short", [("0.0003487802515319414", "3.49e-4"), ("0.001", "1e-3"), ("2e-06", "2e-6"),
                                        ("0.05", "0.05"), ("0.25", "0.25"), ("16", "16"), ("1024", "1024"),
                                        ("all-linear", "all-linear"),
                                        ("[q_proj,v_proj]", "[q_proj,v_proj]")])
def test_values_in_names_keep_three_significant_digits(text, short):
    assert format_value(text) == short


def test_a_single_run_is_named_by_its_hyperparameters_only(monkeypatch):
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)
    overrides = ["model=tiny", "data=emollm", "data.path=/home/me/emollm.json", "data.eval_size=8",
                 "tracker.mode=disabled",
                 "tracker.log_dir=/tmp/x", "optim.lr=0.0003487802515319414", "lora.r=8", "train.device=cpu",
                 "+hydra.job.env_set.FTHARNESS_STORAGE=sqlite:////x.db"]
    assert run_name(overrides) == "lr=3.49e-4,r=8"
    assert run_name(["model=tiny", "tracker.mode=disabled"]) == "default"


def test_a_sweeps_runs_are_named_by_the_swept_keys(monkeypatch):
    monkeypatch.setenv(SWEPT_KEYS_ENV, "optim.lr,lora.r")
    assert run_name(["optim.lr=0.0003487802515319414", "lora.r=8", "train.max_steps=4"]) == "lr=3.49e-4,r=8"


def test_the_boards_table_gets_dotted_keys_swept_first(monkeypatch):
    monkeypatch.setenv(SWEPT_KEYS_ENV, "lora.r")
    config = board_config({"name": "x", "optim": {"lr": 1e-3}, "lora": {"r": 8, "target_modules": ["q_proj"]}})
    assert list(config) == ["lora.r", "result.state", "result.reason", "optim.lr", "lora.target_modules"]


def test_only_a_failed_trial_reads_as_crashed_on_the_board(tmp_path, monkeypatch):
    monkeypatch.delenv(SWEEP_ENV, raising=False)
    cfg = compose_config("tracker.mode=local", f"tracker.log_dir={tmp_path}", tiny=False)
    outcomes = {"completed": None, "pruned": "pruned at step 4 (eval_loss 1.2)",
                "diverged": "diverged at step 3: loss is nan", "failed": "RuntimeError: out of memory"}
    for status, reason in outcomes.items():
        tracker = Tracker(cfg, status, {"optim": {"lr": 1e-3}})
        tracker.log({"train/loss": 1.0, "train/epoch": 0.5, "train/tokens_seen": 100}, step=1)
        tracker.finish(status, reason)
    with serve_board(tmp_path) as url:
        board = {e["name"]: e for e in experiments(url)}
    assert {name: e["status"] for name, e in board.items()} == {"completed": 1, "pruned": 1, "diverged": 1,
                                                                 "failed": -1}
    assert board["pruned"]["description"] == "pruned at step 4 (eval_loss 1.2)"
    assert board["diverged"]["config"]["result.state"]["value"] == "diverged"
    assert board["failed"]["description"].startswith("failed: RuntimeError")
    run_dir = tmp_path / board["completed"]["run_id"] / "logs"
    assert len(list(run_dir.iterdir())) == 1  # train/loss only: epoch and tokens_seen are not charted


# ---- a real sweep, read on the board ----

@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("study")
    result = run_cli(*STUDY, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.fixture(scope="module")
def board(study):
    with serve_board(study / "outputs" / "swanlog" / "lr-study") as url:
        yield url


def trial_runs(board: str) -> list:
    """The board's runs of the study's trials (its own run, named after it, apart)."""
    return [e for e in experiments(board) if e["name"] != "lr-study"]


def test_the_study_has_a_run_of_its_own_with_its_scatter_charts(board, study):
    own, = [e for e in experiments(board) if e["name"] == "lr-study"]
    media = study / "outputs" / "swanlog" / "lr-study" / own["run_id"] / "media"
    assert [len(list((media / str(chart)).glob("*.json"))) for chart in (1, 2)] == [1, 1]  # one completed trial


def test_a_studys_runs_on_the_board_are_coloured_along_viridis_by_lr(board):
    runs = sorted(trial_runs(board), key=lambda e: float(e["config"]["optim.lr"]["value"]))
    assert [e["name"] for e in runs] == ["lr=1e-4", "lr=1e-3", "lr=0.01"]
    positions = [viridis_position(e["light"]) for e in runs]
    assert positions == sorted(set(positions)) and positions[0] == 0  # distinct, rising with lr from the bottom
    assert [e["light"] for e in runs] == [Scale("optim.lr", 1e-4, 1e-2, log=True).colour(lr) for lr in LRS]


def test_pruned_trials_are_finished_with_their_reason_not_crashed(board):
    states = {e["name"]: (e["status"], e["config"]["result.state"]["value"], e["description"])
              for e in trial_runs(board)}
    assert states["lr=0.01"] == (1, "completed", "completed")
    for name in ("lr=1e-4", "lr=1e-3"):
        status, state, description = states[name]
        assert (status, state) == (1, "pruned") and description.startswith("pruned at step 2 (eval_loss")


def test_the_config_is_one_dotted_column_per_key_swept_first(board):
    config = trial_runs(board)[0]["config"]
    assert {"optim.lr", "lora.r", "train.max_steps", "result.state"} <= set(config)
    assert not any(isinstance(v["value"], dict) and v["value"] for v in config.values())  # no nested blobs
    first = sorted(config, key=lambda k: config[k]["sort"])[:3]
    assert first == ["optim.lr", "result.state", "result.reason"]


def test_the_study_carries_its_metric_name(study):
    import optuna

    loaded = optuna.load_study(study_name="lr-study", storage=f"sqlite:///{study}/outputs/studies/lr-study.db")
    assert loaded.metric_names == ["eval_loss"]


# ---- the same pages in a real browser ----

needs_chromium = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                    reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")


@needs_chromium
def test_the_charts_page_draws_every_run_in_its_colour(board):
    pytest.importorskip("playwright", reason="Playwright's Python package (pip install -e '.[test]')")
    colours = {e["name"]: e["light"] for e in trial_runs(board)}
    with browser_page() as page:
        page.goto(f"{board}/charts")
        chart = page.locator("section.chart-container", has=page.locator("p", has_text="train/grad_norm"))
        legend = chart.locator(".lc-legend-item")
        legend.first.wait_for()  # the legend comes with the chart's data
        shown = {legend.nth(i).inner_text(): legend.nth(i).evaluate("e => getComputedStyle(e).color")
                 for i in range(legend.count())}
        assert page.locator("text=train/epoch").count() == 0 and page.locator("text=train/loss").count() == 1
        assert page.errors == []

    def rgb(hex_: str) -> str:
        return f"rgb({int(hex_[1:3], 16)}, {int(hex_[3:5], 16)}, {int(hex_[5:7], 16)})"

    assert shown == {name: rgb(colour) for name, colour in colours.items()}


@needs_chromium
def test_the_report_page_lists_every_run(study):
    pytest.importorskip("playwright", reason="Playwright's Python package (pip install -e '.[test]')")
    sweep_dir, = (study / "outputs" / "multirun" / "lr-study").iterdir()
    with browser_page() as page:
        page.goto((sweep_dir / "report.html").as_uri())
        table = page.locator("table").first
        rows = table.locator("tr").count() - 1  # less the header
        text = table.inner_text().lower()
        figures = page.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert page.errors == []
    assert rows == 3 and text.count("pruned") >= 2 and "completed" in text
    assert figures and all(width > 0 for width in figures)  # every embedded figure decoded
