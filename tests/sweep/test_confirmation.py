"""A study's best points run again with other seeds: the trials it adds, the verdict, best.json, resume."""

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from test_sweeper import SWEEP, load_study, sweep_dirs

from conftest import run_cli
from ftharness.contract import TrialAttr
from ftharness.sweep.best import best
from ftharness.sweep.confirmation import confirmed_points, planned_runs, verdict
from ftharness.sweep.from_best import from_best_arguments

CONFIRM = ["optim.lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=4",
           "hydra.sweeper.pruner.name=none", "hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.seeds=2"]


def test_a_study_confirms_its_two_best_points_with_two_seeds_each_once(tmp_path):
    result = run_cli(*SWEEP, *CONFIRM, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    confirmations = [t for t in study.trials if TrialAttr.CONFIRMS in t.user_attrs]
    trained = [t for t in study.trials if t not in confirmations and t.user_attrs[TrialAttr.STATUS] != "repeat"]
    assert len(trained) == 4 and len(confirmations) == 4  # (seed 0 asks trial 0's lr again as trial 3: a repeat)
    found = sorted(trained, key=lambda t: t.value)[:2]
    assert sorted((t.user_attrs[TrialAttr.CONFIRMS], t.user_attrs[TrialAttr.SEED]) for t in confirmations) == \
        sorted((t.number, seed) for t in found for seed in (43, 44))
    for trial in confirmations:  # the point of the trial it confirms, another seed, never pruned
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.params == study.trials[trial.user_attrs[TrialAttr.CONFIRMS]].params
        summary = trial.user_attrs[TrialAttr.SUMMARY]
        assert summary["params"]["seed"] == str(trial.user_attrs[TrialAttr.SEED]) and summary["steps"] == 4
        assert summary["run_name"].endswith(f",seed={trial.user_attrs[TrialAttr.SEED]}")  # told apart in SwanLab
    assert "confirm 1/4" in result.stdout and "confirm 4/4" in result.stdout

    sweep_dir = sweep_dirs(tmp_path)[0]
    recorded = json.loads((sweep_dir / "best.json").read_text())
    points = confirmed_points(study)
    assert recorded["best"]["number"] == points[0].trial.number
    assert recorded["best"]["confirmed"]["mean"] == pytest.approx(points[0].spread.mean)
    assert len(recorded["best"]["confirmed"]["values"]) == 3
    assert recorded["confirmation"]["verdict"] == verdict(study, points)
    assert [p["number"] for p in recorded["confirmation"]["points"]] == [p.trial.number for p in points]
    assert f"Confirmation: {verdict(study, points)}" in result.stdout  # after the results table
    page = (sweep_dir / "report.html").read_text()
    assert "<h2>Confirmation</h2>" in page
    assert f"{len(study.trials)} runs (5 trials, 4 confirmations, 1 repeat of a trained point" in page
    assert "<h2>By value</h2>" not in page  # the confirmation's table is the one by point

    again = run_cli(*SWEEP, *CONFIRM, cwd=tmp_path)  # the same command: nothing left to run
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(load_study(tmp_path).trials) == len(study.trials) and "confirm 1/" not in again.stdout


def _study(direction: str, values: dict) -> optuna.Study:
    """A study whose trial i ran lr=i with value values[i][0], confirmed by the rest of values[i] (seeds 43...)."""
    study = optuna.create_study(direction=direction)
    lr = FloatDistribution(0, 10)
    for number, (value, *_) in values.items():
        study.add_trial(optuna.trial.create_trial(params={"lr": number}, distributions={"lr": lr}, value=value))
    for number, (_, *others) in values.items():
        for seed, value in enumerate(others, 43):
            study.add_trial(optuna.trial.create_trial(
                params={"lr": number}, distributions={"lr": lr}, value=value,
                user_attrs={TrialAttr.CONFIRMS: number, TrialAttr.SEED: seed}))
    return study


@pytest.mark.parametrize("direction,values,expected", [
    ("minimize", {0: (0.30, 0.31, 0.29), 1: (0.34, 0.40, 0.38)}, "best confirmed"),
    ("minimize", {0: (0.30, 0.31, 0.29), 1: (0.28, 0.33, 0.35)}, "within noise of trial 1"),  # 1: a lucky seed
    ("maximize", {0: (0.9, 0.8, 0.85), 1: (0.7, 0.75, 0.72)}, "best confirmed"),
])
def test_the_verdict_compares_the_best_mean_with_the_runner_up_beyond_seed_noise(direction, values, expected):
    study = _study(direction, values)
    points = confirmed_points(study)
    assert points[0].trial.number == 0 and verdict(study, points) == expected
    assert best(study)["best"]["number"] == 0  # the best mean, not the single best trial (trial 1 in case 2)
    assert planned_runs(study, 2, 2, 42) == []  # both points told with seeds 43 and 44


def test_confirmation_settings_that_cannot_work_fail_in_one_line(tmp_path):
    for setting in (["hydra.sweeper.confirm.top_k=-1"],
                    ["hydra.sweeper.confirm.top_k=1", "hydra.sweeper.sampler.name=grid", "hydra.sweeper.seeds=2",
                     "optim.lr=choice(1e-3,1e-2)"]):
        result = run_cli(*SWEEP, *setting, cwd=tmp_path)
        assert result.returncode != 0 and "hydra.sweeper.confirm" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr


def _at_budget(values: dict, budget: int) -> optuna.Study:
    """A study whose trial i ran lr=i with value values[i][0] at its own horizon, confirmed by the rest of values[i]
    at `budget` steps with seeds 42, 43, ..."""
    study = _study("minimize", {number: (value,) for number, (value, *_) in values.items()})
    for number, (_, *others) in values.items():
        for seed, value in enumerate(others, 42):
            study.add_trial(optuna.trial.create_trial(
                params={"lr": number}, distributions={"lr": FloatDistribution(0, 10)}, value=value,
                user_attrs={TrialAttr.CONFIRMS: number, TrialAttr.SEED: seed, TrialAttr.BUDGET: budget}))
    return study


@pytest.mark.parametrize("values,expected", [
    ({0: (0.30, 0.20, 0.21), 1: (0.34, 0.25, 0.26)}, "best confirmed at 54 steps; the study's order held"),
    ({0: (0.30, 0.25, 0.26), 1: (0.34, 0.20, 0.21)},
     "best confirmed at 54 steps; the study's order did not hold: trials 1, 0 by their mean there, 0, 1 in the study"),
])
def test_at_a_budget_a_point_is_its_confirmations_alone_and_the_verdict_says_whether_the_order_held(values, expected):
    study = _at_budget(values, 54)
    points = confirmed_points(study)
    assert [p.values for p in points] == sorted((tuple(v[1:]) for v in values.values()), key=sum)
    assert all(p.budget == 54 and p.seeds == (42, 43) for p in points)
    assert verdict(study, points) == expected
    assert best(study)["best"]["confirmed"]["budget"] == 54
    assert planned_runs(study, 2, 2, 42, budget=54) == []  # seeds 42 and 43 told at 54 steps
    assert [(t.number, seed) for t, seed in planned_runs(study, 2, 2, 42)] == [(0, 43), (0, 44), (1, 43), (1, 44)]


def test_confirm_budget_runs_the_best_points_at_that_many_steps_and_from_best_trains_there(tmp_path):
    result = run_cli(*SWEEP, *CONFIRM, "hydra.sweeper.confirm.seeds=1", "hydra.sweeper.confirm.budget=6",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "confirm: the best 2 points again with 1 seed each at train.max_steps=6, no pruning (2 trials)" \
        in result.stdout
    study = load_study(tmp_path)
    confirmations = [t for t in study.trials if TrialAttr.CONFIRMS in t.user_attrs]
    assert [(t.user_attrs[TrialAttr.SEED], t.user_attrs[TrialAttr.BUDGET], t.user_attrs[TrialAttr.STEPS])
            for t in confirmations] == [(42, 6, 6)] * 2  # the study's trials ran 4 steps
    points = confirmed_points(study)
    assert f"confirm: {verdict(study, points)}" in result.stdout and " at 6 steps; the study's order " in result.stdout
    assert sorted(len(p.values) for p in points) == [1, 1]
    argv, handed_over = from_best_arguments([f"from_best={sweep_dirs(tmp_path)[0]}"])
    assert handed_over is None and argv[-1] == "train.max_steps=6"  # its trial ran 4 steps: trained at the budget
