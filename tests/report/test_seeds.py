"""Seeds: a comparison sweep runs every value with several seeds (hydra.sweeper.seeds); the report and the findings
group the runs by value (mean, min..max) and judge each check against the seeds' spread."""

from dataclasses import replace
from typing import Dict, List

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution

from conftest import TINY, run_cli
from ftharness.contract import StudyAttr, TrialAttr, TrialSummary
from ftharness.report.figures import by_value_figure, curves_figure
from ftharness.report.findings import FAILED, FINDINGS, HELD, NOISE, Check, verdict
from ftharness.report.results import results_of, value_rows
from ftharness.report.runs import Run, study_runs
from ftharness.report.seeds import group_by_value
from ftharness.report.sweep_report import Report, build
from ftharness.sweep.heartbeats import retry_interrupted, start_with_heartbeat
from ftharness.sweep.loop import StudySweep
from ftharness.sweep.optuna_objects import SweepConfigError
from ftharness.sweep.space import SearchSpace
from hydra_plugins.ftharness_sweeper.config import FtharnessSweeperConf

SWEEP = ["-m", *TINY, "eval.max_new_tokens=0"]


def seeded_runs(key: str, best_eval_loss: Dict[str, List[float]], **summary: Dict[str, List[float]]) -> List[Run]:
    """Completed runs of `key`, one per value and seed (42, 43, ...), with these best eval losses and, per
    summary field, these values; labelled and sorted as a sweep's report reads them."""
    runs = []
    for value, losses in best_eval_loss.items():
        for index, loss in enumerate(losses):
            steps = [{"step": s, "loss": 1.0 / s, "grad_norm": 1.0 + index} for s in (1, 2, 3)]
            fields = {name: values[value][index] for name, values in summary.items()}
            runs.append(Run(f"trial {len(runs)}", {key: value, "seed": str(42 + index)}, "completed",
                            summary=TrialSummary.from_dict({"status": "completed", **fields}), train=steps,
                            evals=[{"step": 0, "loss": 1.0, "epoch": 0}, {"step": 3, "loss": loss, "epoch": 1}]))
    return results_of(runs).runs


def checks_of(key: str, runs: List[Run]) -> List[Check]:
    return FINDINGS[key].checks(group_by_value(runs))


@pytest.mark.parametrize("losses,outcome,numbers", [
    ({"16": [0.025, 0.026, 0.027], "32": [0.028, 0.029, 0.030]}, HELD, "alpha 16: 0.026 (0.025..0.027), alpha 32: "
                                                                       "0.029 (0.028..0.03)"),
    ({"16": [0.024, 0.029, 0.027], "32": [0.026, 0.030, 0.031]}, NOISE, "alpha 16: 0.0267 (0.024..0.029), alpha 32: "
                                                                        "0.029 (0.026..0.031)"),
    ({"16": [0.031, 0.032, 0.033], "32": [0.028, 0.029, 0.030]}, FAILED, "alpha 16: 0.032 (0.031..0.033)"),
    ({"16": [0.0253], "32": [0.0289]}, HELD, "alpha 16: 0.0253, alpha 32: 0.0289;"),  # one seed: as before seeds
])
def test_a_difference_counts_only_beyond_the_seeds_spread(losses, outcome, numbers):
    check, = checks_of("lora.alpha", seeded_runs("lora.alpha", losses))
    assert check.outcome == outcome and numbers in check.numbers
    assert verdict([check]) == {HELD: "reproduced", NOISE: NOISE, FAILED: "not reproduced"}[outcome]


@pytest.mark.parametrize("losses,outcome", [
    ({"0.0": [0.029, 0.030, 0.031], "0.1": [0.030, 0.031, 0.032]}, HELD),  # means 3 % apart
    ({"0.0": [0.020, 0.030, 0.040], "0.1": [0.030, 0.045, 0.050]}, NOISE),  # 40 % apart, ranges overlapping
    ({"0.0": [0.020, 0.021, 0.022], "0.1": [0.030, 0.031, 0.032]}, FAILED),  # 40 % apart, ranges apart
])
def test_a_claim_of_little_effect_fails_only_when_the_values_differ_beyond_their_seeds(losses, outcome):
    check, = checks_of("lora.dropout", seeded_runs("lora.dropout", losses))
    assert check.outcome == outcome and "means" in check.numbers


def test_a_trend_holds_only_when_each_step_exceeds_the_seeds_spread():
    """Batch size: memory rises beyond noise, train time falls within noise; each number shows its spread."""
    losses = {"1": [0.1] * 3, "2": [0.1] * 3, "4": [0.1] * 3}
    memory = {"1": [1300, 1310, 1305], "2": [1500, 1490, 1510], "4": [1900, 1905, 1910]}
    time = {"1": [100, 80, 90], "2": [85, 70, 75], "4": [60, 65, 72]}  # 4 overlaps 2
    runs = seeded_runs("train.per_device_batch_size", losses, peak_memory_mb=memory, train_time_s=time,
                       memory_kind={v: ["cpu_rss_training"] * 3 for v in memory})
    smoother, shorter, more_memory = checks_of("train.per_device_batch_size", runs)
    assert more_memory.outcome == HELD and "(cpu_rss_training) 1: 1305 (1300..1310)" in more_memory.numbers
    assert shorter.outcome == NOISE and "2: 76.7 (70..85), 4: 65.7 (60..72)" in shorter.numbers
    assert smoother.outcome == FAILED  # the same jitter for every batch size
    assert verdict([smoother, shorter, more_memory]) == "partly reproduced (1 of 3 within seed noise)"


def test_a_compile_is_no_cost_of_the_setting_whose_trial_paid_it():
    """With train.compile, a trial compiles the graphs the later trials of its process reuse: the batch-size check
    compares the steps' time, and the report's time line says what compiling took of it."""
    once = {"1": [0.0], "2": [60.0], "4": [0.0]}  # the batch of 2 ran first
    runs = seeded_runs("train.per_device_batch_size", {value: [0.1] for value in once}, compile_time_s=once,
                       train_time_s={"1": [80.0], "2": [130.0], "4": [60.0]}, device={value: ["cpu"] for value in once},
                       peak_memory_mb={"1": [1300.0], "2": [1500.0], "4": [1900.0]})
    _, shorter, _ = checks_of("train.per_device_batch_size", runs)
    assert shorter.outcome == HELD and "1: 80, 2: 70, 4: 60" in shorter.numbers
    report = Report("batch", "train.per_device_batch_size", ["train.per_device_batch_size"], runs, [], [], {}, None,
                    [], elapsed_s=600.0)
    assert report.time_line == "10.0 min of trials on cpu, 1.0 min of it compiling"
    assert replace(report, runs=seeded_runs("lora.r", {"8": [0.1]}, device={"8": ["cpu"]})).time_line == \
        "10.0 min of trials on cpu"


@pytest.mark.parametrize("outcomes,expected", [
    ([HELD, HELD], "reproduced"), ([NOISE, NOISE], NOISE),
    ([HELD, NOISE], "partly reproduced (1 of 2 within seed noise)"),
    ([FAILED, NOISE], "not reproduced (1 of 2 within seed noise)"), ([FAILED, HELD], "partly reproduced"),
    ([], "not checked: no finished runs"),
])
def test_a_check_within_seed_noise_never_counts_as_held(outcomes, expected):
    assert verdict([Check("", outcome, "") for outcome in outcomes]) == expected


def test_the_report_draws_a_mean_line_with_a_band_per_value_and_a_table_by_value():
    runs = seeded_runs("lora.alpha", {"16": [0.025, 0.026, 0.027], "32": [0.028, 0.029, 0.030]},
                       wall_time_s={"16": [10, 11, 12], "32": [20, 21, 22]})
    figure = curves_figure("lora.alpha", runs)
    loss = figure.axes[0]
    assert [line.get_label() for line in loss.get_lines()] == ["16", "32"] and len(loss.collections) == 2  # bands
    assert "mean of 3 seeds" in figure.legends[0].get_title().get_text()
    assert all(len(axis.containers) == 3 for axis in by_value_figure("lora.alpha", runs).axes[:1])  # min..max bars
    rows = value_rows("lora.alpha", group_by_value(runs), ["eval_loss"])
    assert [(r["lora.alpha"], r["seeds"], r["wall_time_s"]) for r in rows] == [("16", "3 completed", "11 (10..12)"),
                                                                              ("32", "3 completed", "21 (20..22)")]
    single = seeded_runs("lora.alpha", {"16": [0.025], "32": [0.028]})
    figure = curves_figure("lora.alpha", single)
    assert not figure.axes[0].collections and figure.legends[0].get_title().get_text() == "lora.alpha"
    assert not by_value_figure("lora.alpha", single).axes[0].containers


def test_a_dead_trial_and_its_retry_are_one_seed_of_their_point():
    """A study's trial whose process died is retried with its point and the study's seed: two runs, not two seeds."""
    dead, retry = seeded_runs("optim.lr", {"1e-4": [0.03]}) + seeded_runs("optim.lr", {"1e-4": [0.02]})
    dead.state = "failed"
    group, = group_by_value([dead, retry])
    assert group.seeds == 1 and group.states == "1 failed, 1 completed"
    assert "band" not in curves_figure("optim.lr", [dead, retry]).legends[0].get_title().get_text()
    assert Report("s", "optim.lr", ["optim.lr"], [dead, retry], [], [], {}, None, [], None).runs_line == "2 runs"


def test_a_confirmation_stopped_before_its_job_keeps_its_own_seed_in_the_report():
    """Without a job folder, a confirmation's seed is its mark, not the study's (Ctrl-C while it was asked)."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.set_user_attr(StudyAttr.SETTINGS, {"fixed": {"seed": 42}})
    point = study.ask({"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)})
    study.tell(point, 0.5)
    confirmation = start_with_heartbeat(study, storage, study.trials[0],
                                        {TrialAttr.CONFIRMS: 0, TrialAttr.SEED: 43})
    retry_interrupted(study, [confirmation], [None], max_retry=3)
    assert [(run.name, run.seed, run.confirms) for run in study_runs(study)] == [("trial 0", "42", None),
                                                                                  ("trial 1", "43", 0)]


def _sweeper(**changes) -> StudySweep:
    conf = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf), {"study_name": "s", "metric": "eval_loss",
                                                                        "direction": "minimize", **changes})
    return StudySweep.from_config(**{k: v for k, v in conf.items() if k != "_target_"})


@pytest.mark.parametrize("changes,message", [
    ({"seeds": 0, "sampler": {"name": "grid"}}, "hydra.sweeper.seeds=0: allowed: 1, or more seeds per point of a grid"),
    ({"seeds": 3, "sampler": {"name": "tpe"}}, "hydra.sweeper.seeds=3: allowed: 1, or more seeds per point of a grid "
                                               "study (sampler.name=grid; this one is tpe)"),
])
def test_a_bad_seed_count_is_refused_before_any_trial(changes, message):
    with pytest.raises(SweepConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _sweeper(**changes)
    assert _sweeper(seeds=3, sampler={"name": "grid"}).budget.seeds == 3


def test_seeds_add_the_seed_to_the_grid_unless_it_is_swept_already():
    space = SearchSpace({"lora.alpha": "choice(16,32)"}, [], seeds=range(42, 45))
    assert space.grid() == {"lora.alpha": [16, 32], "seed": [42, 43, 44]}
    assert space.overrides({"lora.alpha": 16, "seed": 43}) == ["lora.alpha=16", "seed=43"]
    with pytest.raises(SweepConfigError, match="seed is swept already"):
        SearchSpace({"lora.alpha": "choice(16,32)", "seed": "choice(1,2)"}, [], seeds=range(42, 45))


def test_a_bad_seed_count_stops_the_command_with_one_line(tmp_path):
    result = run_cli(*SWEEP, "sweep=alpha", "hydra.sweeper.seeds=-1", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "hydra.sweeper.seeds=-1: allowed: 1, or more seeds" in result.stderr
    assert not list(tmp_path.glob("outputs/multirun/*/*/0/summary.json"))  # no trial ran


def test_a_seeded_comparison_runs_value_x_seed_and_reports_by_value(tmp_path):
    result = run_cli(*SWEEP, "sweep=alpha", cwd=tmp_path)  # the preset's 3 seeds: 2 values x 3 seeds
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "alpha-study").iterdir()
    report = build(sweep_dir)
    assert report.key == "lora.alpha" and report.runs_line == "6 runs (2 values x 3 seeds)"
    assert sorted((r.values["lora.alpha"], r.values["seed"]) for r in report.runs) == [
        (alpha, str(seed)) for alpha in ("16", "32") for seed in (42, 43, 44)]
    assert [(r["lora.alpha"], r["seed"]) for r in report.table][:3] == [("16", "42"), ("16", "43"), ("16", "44")]
    assert [(r["lora.alpha"], r["seeds"]) for r in report.by_value] == [("16", "3 completed"), ("32", "3 completed")]
    assert all(".." in r["eval_loss"] for r in report.by_value)  # mean (min..max)
    check, = report.finding["checks"]
    assert check.outcome in (HELD, FAILED, NOISE) and ".." in check.numbers
    page = (sweep_dir / "report.html").read_text()
    assert "<h2>By value</h2>" in page and "one line per value: the mean of 3 seeds" in page


def test_a_grid_study_of_one_seed_is_not_resumed_with_three(tmp_path):
    """Its trials have no seed: the grid would count them as points of the seeded grid that never ran."""
    grid = [*SWEEP, "sweep=alpha", "lora.alpha=choice(16,32)", "train.max_steps=1"]
    assert run_cli(*grid, "hydra.sweeper.seeds=1", cwd=tmp_path).returncode == 0
    result = run_cli(*grid, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "study alpha-study in outputs/studies/alpha-study.db was run with other settings: seed: 42 (now searched)" \
           in result.stderr


def epoch_runs(curves: Dict[str, List[List[float]]], accuracy: Dict[str, List[float]]) -> List[Run]:
    """Completed runs of train.epochs, one per value and seed: eval loss after each epoch, test accuracy."""
    runs = []
    for value, per_seed in curves.items():
        for index, losses in enumerate(per_seed):
            evals = [{"step": 4 * epoch, "loss": loss, "epoch": epoch} for epoch, loss in enumerate(losses)]
            runs.append(Run(f"trial {len(runs)}", {"train.epochs": value, "seed": str(42 + index)}, "completed",
                            summary=TrialSummary.from_dict({"after": {"test_accuracy": accuracy[value][index]}}),
                            evals=evals))
    return results_of(runs).runs


def test_the_epochs_finding_reads_each_seeds_curve_and_the_test_accuracy_by_value():
    turns_up = [0.57, 0.19, 0.08, 0.065, 0.07, 0.09, 0.086, 0.085, 0.084, 0.084, 0.084]
    curves = {"3": [turns_up[:4]] * 3, "10": [turns_up, [v + 0.002 for v in turns_up], [v - 0.002 for v in turns_up]]}
    accuracy = {"3": [0.9, 0.92, 0.91], "10": [0.62, 0.65, 0.6]}
    best, hurts, lower = checks_of("train.epochs", epoch_runs(curves, accuracy))
    assert (best.outcome, hurts.outcome, lower.outcome) == (HELD, HELD, HELD)
    assert "3: 0.065 (0.063..0.067)" in best.numbers and "best epoch 3" in best.numbers
    assert "10: 0.623 (0.6..0.65)" in lower.numbers
    curves["10"][2] = [0.57, 0.19, 0.08, 0.07, 0.06, 0.055, 0.05, 0.045, 0.04, 0.035, 0.03]  # one seed keeps falling
    best, hurts, lower = checks_of("train.epochs", epoch_runs(curves, accuracy))
    assert (best.outcome, hurts.outcome, lower.outcome) == (NOISE, NOISE, HELD)
    assert verdict([best, hurts, lower]) == "partly reproduced (2 of 3 within seed noise)"


def rank_lr_runs(losses: Dict[tuple, List[float]]) -> List[Run]:
    """Completed runs of a rank x lr x scaling grid: (scaling, r, lr) -> best eval loss per seed."""
    runs = []
    for (scaling, rank, lr), seeds in losses.items():
        for index, loss in enumerate(seeds):
            values = {"lora.r": rank, "optim.lr": lr, "lora.scaling": scaling, "seed": str(42 + index)}
            runs.append(Run(f"trial {len(runs)}", values, "completed", summary=TrialSummary.from_dict(
                {"status": "completed"}), evals=[{"step": 0, "loss": 1.0}, {"step": 12, "loss": loss}]))
    return results_of(runs).runs


@pytest.mark.parametrize("rslora_at_64,expected", [
    ([0.31, 0.32, 0.33], HELD),  # 2e-3 (0.20..0.22) stays best at r=64: the same best lr
    ([0.19, 0.20, 0.225], NOISE),  # 8e-3 best at r=64, but within the seeds of 2e-3 there
    ([0.10, 0.11, 0.12], FAILED),  # 8e-3 best at r=64 beyond noise: rsLoRA's best lr moved
])
def test_the_rank_lr_finding_asks_whether_the_best_lr_moves_with_the_rank_beyond_seed_noise(rslora_at_64, expected):
    good, bad = [0.20, 0.21, 0.22], [0.40, 0.41, 0.42]
    runs = rank_lr_runs({("standard", "4", "2e-3"): good, ("standard", "4", "8e-3"): bad,
                         ("standard", "64", "2e-3"): bad, ("standard", "64", "8e-3"): good,
                         ("rslora", "4", "2e-3"): good, ("rslora", "4", "8e-3"): bad,
                         ("rslora", "64", "2e-3"): good, ("rslora", "64", "8e-3"): rslora_at_64})
    standard, rslora = checks_of("lora.r x lora.scaling x optim.lr", runs)
    assert standard.outcome == HELD and standard.numbers.startswith("r=4: best lr 0.002 (0.21 (0.2..0.22)), then 0.008")
    assert rslora.outcome == expected and "r=64: best lr" in rslora.numbers
