"""The sweeper on a Hydra app that knows nothing of ftharness (tests/fixtures/plain_app): its trials are told what the
task function returns, its reports through `trial.report` get it pruned (in-process, through joblib and submitit), the
defaults need none of ftharness's keys, `range()` is a numeric distribution, and a bad key or a sampler that raises
stops the sweep in one line without leaving a trial running. Each sweep takes a few seconds: no model, no torch."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import FIXTURES, REPO, finished_job
from ftharness.report.__main__ import main as report_main
from ftharness.sweep.loop import StudySweep
from ftharness.sweep.optuna_objects import SweepConfigError, make_pruner, make_sampler
from ftharness.sweep.space import SearchSpace
from ftharness.sweep.telling import job_outcome, returned_values, told_line
from ftharness.sweep.trial import finite_or_worst
from ftharness.ui.formatting import format_value
from hydra_plugins.ftharness_sweeper.config import FtharnessSweeperConf

APP = FIXTURES / "plain_app" / "app.py"


def run_app(cwd: Path, mode: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python app.py <mode> hydra/sweeper=ftharness ...` in `cwd` (mode "": a single run), the plugin found on
    PYTHONPATH, `env` added to the environment."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(APP), *filter(None, [mode]), "hydra/sweeper=ftharness",
                           "hydra.sweeper.sampler.seed=0", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path, "HYDRA_FULL_ERROR": "0", **env})


def sweep_app(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_app(cwd, "-m", *args, **env)


def app_study(cwd: Path) -> optuna.Study:
    """The study of a sweep with the default name and storage: the job's name, under outputs/studies/."""
    return optuna.load_study(study_name="app", storage=f"sqlite:///{cwd}/outputs/studies/app.db")


def best_json(cwd: Path) -> dict:
    path, = (cwd / "multirun").glob("*/*/best.json")
    return json.loads(path.read_text())


def loss(params: dict) -> float:
    return (params["x"] - 1) ** 2 + params.get("y", 0.0) + params.get("+w", 0.0)


def test_a_plain_apps_trials_are_told_the_number_its_task_function_returns(tmp_path):
    result = sweep_app(tmp_path, "x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.n_trials=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    launched = [line.split(" : ")[1].split() for line in result.stdout.splitlines() if "\t#" in line]
    assert len(launched) == 4 and all(len(job) == 2 for job in launched)  # `x=1 y=0.31`: no sweep environment
    study = app_study(tmp_path)  # named after the job: the app has no `name`
    ran = [t for t in study.trials if t.user_attrs["status"] == "completed"]  # a repeat is told its twin's value
    assert len(ran) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(t.values == [pytest.approx(loss(t.params))] for t in ran)
    assert study.trials[0].distributions == {"x": IntDistribution(-1, 2), "y": FloatDistribution(0, 1)}
    assert study.metric_names == ["objective"] and study.direction.name == "MINIMIZE"
    assert best_json(tmp_path)["best"]["values"] == {"objective": study.best_value}
    results, = (tmp_path / "multirun").glob("*/*/optimization_results.yaml")  # hydra-optuna-sweeper's file
    assert OmegaConf.to_container(OmegaConf.load(results)) == {
        "name": "ftharness", "best_params": study.best_params, "best_value": study.best_value}
    sweep_dir, best = results.parent.relative_to(tmp_path), study.best_trial
    assert result.stdout.splitlines()[-3:] == [  # the peer logs the best point too
        f"study app: best trial {best.number} (x={best.params['x']}, y={format_value(best.params['y'])}), objective "
        f"{format_value(best.value)}", f"best:   {sweep_dir / 'best.json'} (and optimization_results.yaml)",
        f"report: python -m ftharness.report {sweep_dir}"]


def test_the_report_of_a_plain_apps_study_shows_what_its_trials_returned(tmp_path):
    """Its jobs write no summary.json or metrics.jsonl: the table shows the study's values, without the columns and
    the curves that only ftharness's trials fill; Optuna's plots are drawn from the study, the values the trials
    reported per step among them."""
    assert sweep_app(tmp_path, "x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.n_trials=3",
                     "report_steps=2").returncode == 0
    sweep_dir, = (tmp_path / "multirun").glob("*/*")
    report_main([str(sweep_dir)])
    with (sweep_dir / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["run", "x", "y", "state", "reason", "objective"]
    values = {f"trial {t.number}": format_value(t.value) for t in app_study(tmp_path).trials}
    assert {row["run"]: row["objective"] for row in rows} == values
    assert not list(sweep_dir.glob("curves.png"))
    assert {"optuna_history.png", "optuna_intermediate_values.png"} <= {path.name for path in sweep_dir.iterdir()}
    assert "No curves: the jobs wrote no metrics.jsonl" in (sweep_dir / "report.html").read_text()


@pytest.mark.parametrize("launcher", [
    [],  # Hydra's basic launcher: the jobs run in the sweeper's process, in turn
    ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"],
    ["hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=3"],
], ids=["basic", "joblib", "submitit_local"])
def test_a_plain_app_that_reports_is_pruned_by_the_studys_pruner(tmp_path, launcher):
    result = sweep_app(tmp_path, *launcher, "x=range(-3,4)", "y=interval(0,1)", "report_steps=3",
                       "hydra.sweeper.n_trials=9", "+hydra.sweeper.pruner.options.n_startup_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    trials = app_study(tmp_path).trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.user_attrs["status"] == "pruned" for t in pruned)
    for trial in pruned:  # stopped at its first report above the median of the trials completed by then
        step, = trial.intermediate_values
        assert trial.user_attrs["reason"].startswith(f"pruned at step {step} (objective ")
        assert "completed trials at step 0: " in trial.user_attrs["reason"] and trial.user_attrs["host"]
    completed = [t for t in trials if t.user_attrs["status"] == "completed"]
    assert completed and all(sorted(t.intermediate_values) == [0, 1, 2] for t in completed)
    assert all(t.values == [pytest.approx(loss(t.params))] for t in completed)


@pytest.mark.parametrize("raised, state, status, reason", [
    (optuna.TrialPruned("pruned at step 2 (objective 5)"), "PRUNED", "pruned", "pruned at step 2 (objective 5)"),
    (RuntimeError("x=3 refused"), "FAIL", "failed", "RuntimeError: x=3 refused"),
])
def test_what_escaped_the_task_function_is_told_without_hydras_error_line(tmp_path, capfd, raised, state, status,
                                                                          reason):
    told, values, attrs = job_outcome(finished_job(tmp_path, raised, JobStatus.FAILED), ["objective"])
    assert (told.name, values, attrs["status"], attrs["reason"]) == (state, None, status, reason)
    assert capfd.readouterr().err == ""  # not Hydra's `Error executing job with overrides`: the reason says it


def test_a_report_outside_a_sweep_does_nothing(tmp_path):
    result = run_app(tmp_path, "", "report_steps=3")  # a single run of the app: no study to report to
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "outputs" / "studies").exists()


@pytest.mark.parametrize("returns, metric, names", [
    ("pair", [], ["objective_0", "objective_1"]),  # a sequence: a value per direction, in order
    ("dict", ["hydra.sweeper.metric=[size,loss]"], ["size", "loss"]),  # by name, in the order the sweeper names
])
def test_a_plain_app_returning_several_objectives_makes_a_pareto_front(tmp_path, returns, metric, names):
    directions = "[minimize,maximize]" if returns == "pair" else "[maximize,minimize]"
    result = sweep_app(tmp_path, f"returns={returns}", *metric, f"hydra.sweeper.direction={directions}",
                       "x=range(-1,3)", "y=range(0.5,2.5)", "hydra.sweeper.n_trials=5",
                       "report_steps=2")  # Optuna prunes no study of several objectives: the reports do nothing
    assert result.returncode == 0, result.stderr[-3000:]
    study = app_study(tmp_path)
    assert study.metric_names == names and study.trials[0].distributions["y"] == FloatDistribution(0.5, 1.5, step=1)
    for trial in study.trials:
        by_name = {"objective_0": loss(trial.params), "loss": loss(trial.params),
                   "objective_1": trial.params["x"] + trial.params["y"], "size": trial.params["x"] + trial.params["y"]}
        assert trial.state.name == "COMPLETE" and trial.values == [pytest.approx(by_name[n]) for n in names]
    front = best_json(tmp_path)["pareto_front"]
    assert sorted(p["number"] for p in front) == sorted(t.number for t in study.best_trials)
    numbers = ", ".join(str(p["number"]) for p in front)
    assert f"study app: the Pareto front of {', '.join(names)} holds trial{'s' * (len(front) > 1)} {numbers}" \
        in result.stdout.splitlines()


def test_a_grid_over_a_range_and_a_choice_runs_each_point_once(tmp_path):
    result = sweep_app(tmp_path, "hydra.sweeper.sampler.name=grid", "x=range(-1,2)", "z=choice(foo,bar)")
    assert result.returncode == 0, result.stderr[-3000:]
    study = app_study(tmp_path)
    assert sorted((t.params["x"], t.params["z"]) for t in study.trials) == sorted(
        (x, z) for x in (-1, 0, 1) for z in ("foo", "bar"))  # n_trials (20) capped at the grid's 6 points
    assert best_json(tmp_path)["best"]["params"]["x"] == 1


def test_jobs_named_after_their_overrides_are_recorded_there_and_no_numbered_folder_is_left(tmp_path):
    result = sweep_app(tmp_path, "hydra.sweeper.sampler.name=grid", "x=range(-1,2)",
                       "hydra.sweep.subdir=${hydra.job.override_dirname}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir, = (tmp_path / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["x=-1", "x=0", "x=1"]
    assert {t.user_attrs["run_dir"] for t in app_study(tmp_path).trials} == {
        str(sweep_dir / name) for name in ("x=-1", "x=0", "x=1")}


def test_a_custom_search_space_suggests_keys_from_the_sampled_ones(tmp_path):
    result = sweep_app(tmp_path, "x=range(-1,3)", "hydra.sweeper.custom_search_space=__main__.near_x",
                       "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = app_study(tmp_path).trials
    assert len(trials) == 3 and all(abs(t.params["+w"] - t.params["x"]) <= 0.5 for t in trials)
    assert all(t.values == [pytest.approx(loss(t.params))] for t in trials)  # the job got w


def test_a_trial_whose_sweep_died_before_its_job_started_is_failed_and_retried_by_the_next_run(tmp_path):
    """Killed between the ask and the launch (here in the custom search space): the trial had no heartbeat yet,
    so Optuna would never fail it and the next run would wait for it for good."""
    args = ["x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.n_trials=3", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=2", "hydra.sweeper.custom_search_space=__main__.signal_after_asking"]
    assert sweep_app(tmp_path, *args, AFTER_ASKING="1", SIGNALS="KILL").returncode == -signal.SIGKILL
    assert [t.state.name for t in app_study(tmp_path).trials] == ["COMPLETE", "RUNNING"]
    result = sweep_app(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("waiting for trial 1: run by another process, or left by one that died (then retried after 2 s without a "
            "heartbeat)") in result.stdout.splitlines()
    assert "Using an existing study" not in result.stderr  # Optuna's INFO line: "resuming app: ..." says it
    trials = app_study(tmp_path).trials
    assert trials[1].state.name == "FAIL"
    retried, = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retried.state.name == "COMPLETE" and retried.params == trials[1].params
    sweep_dir = sorted((tmp_path / "multirun").glob("*/*"))[-1]
    report_main([str(sweep_dir)])
    row, = [line for line in (sweep_dir / "results.md").read_text().splitlines() if line.startswith("| trial 1 |")]
    assert f"| failed | its sweep process died (no heartbeat); retried as trial {retried.number} |" in row


def test_a_running_trial_that_never_had_a_heartbeat_is_given_one_then_failed_and_retried(tmp_path):
    """Asked by a process killed before its first beat, or by an ftharness that beat from the launch on: Optuna fails
    only trials that had a beat, and the next run waited for it for good (measured: still waiting at a 40 s timeout)."""
    args = ["x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    assert sweep_app(tmp_path, *args, "hydra.sweeper.n_trials=1").returncode == 0
    beatless = app_study(tmp_path).ask({"x": IntDistribution(-1, 2), "y": FloatDistribution(0, 1)})  # no heartbeat:
    result = sweep_app(tmp_path, *args, "hydra.sweeper.n_trials=3")  # opened without one, the storage records none
    assert result.returncode == 0, result.stderr[-3000:]
    trials = app_study(tmp_path).trials
    assert trials[beatless.number].state.name == "FAIL"
    retried, = [t for t in trials if t.system_attrs.get("failed_trial") == beatless.number]
    assert retried.state.name == "COMPLETE" and retried.params == trials[beatless.number].params


def test_ctrl_c_between_asking_a_trial_and_launching_it_records_it_interrupted_and_the_rerun_retries_it_at_once(
        tmp_path):
    """Ctrl-C is held while a batch is asked (sampling, composing, the memory check): the asked trial has no job
    that could record it, and left running it made the next run wait grace_period for it."""
    args = ["x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.custom_search_space=__main__.signal_after_asking"]
    first = sweep_app(tmp_path, *args, AFTER_ASKING="1", SIGNALS="INT")
    assert first.returncode == 130 and "interrupted in trial 1; run the same command to resume" in first.stdout
    assert "Traceback" not in first.stderr
    trials = app_study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]  # trial 2: trial 1's point, queued
    assert trials[1].user_attrs["status"] == "interrupted"
    result = sweep_app(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "waiting for trial" not in result.stdout
    assert "resuming app: 1 of 3 trials exist, 2 to go; first trial 1 again (interrupted)" in result.stdout.splitlines()
    retried = app_study(tmp_path).trials[2]
    assert (retried.state.name, retried.params, retried.user_attrs["reason"]) == ("COMPLETE", trials[1].params, "")


def test_ctrl_c_pressed_twice_while_a_trial_is_asked_stops_at_once_and_the_rerun_retries_the_trial(tmp_path):
    """The second press gets out of a block that seems stuck: the asked trial is left running, as by a sweep that
    died, and the heartbeat check retries it."""
    args = ["x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.n_trials=3", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=2", "hydra.sweeper.custom_search_space=__main__.signal_after_asking"]
    first = sweep_app(tmp_path, *args, AFTER_ASKING="1", SIGNALS="INT INT")
    assert first.returncode == 130 and "interrupted; run the same command to resume" in first.stdout.splitlines()
    assert "Traceback" not in first.stderr
    assert [t.state.name for t in app_study(tmp_path).trials] == ["COMPLETE", "RUNNING"]
    assert sweep_app(tmp_path, *args).returncode == 0
    trials = app_study(tmp_path).trials
    assert trials[1].state.name == "FAIL" and [t.system_attrs.get("failed_trial") for t in trials[2:]].count(1) == 1


@pytest.mark.parametrize("settings, key", [
    (["hydra.sweeper.confirm.top_k=1"], "seed"),
    (["hydra.sweeper.sampler.name=grid", "hydra.sweeper.seeds=2"], "seed"),
    (["+seed=1", "hydra.sweeper.confirm.top_k=1", "hydra.sweeper.confirm.budget=5"], "train.max_steps"),
])
def test_seeds_or_confirmations_for_an_app_without_their_keys_stop_before_any_trial_in_one_line(tmp_path, settings,
                                                                                                 key):
    """They set `seed` (and train.max_steps) in each job: the app had a traceback once its study had run."""
    result = sweep_app(tmp_path, "x=range(-1,3)", *settings)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    setting = settings[-1].split("=")[0]
    assert f"{settings[-1]}: it sets `{key}` in each job's config, a key this app's config has not; add `{key}` to " \
        f"it (read by the task function), or leave {setting} at its default" in result.stderr
    assert not (tmp_path / "outputs" / "studies").exists()


def test_an_app_with_a_seed_key_confirms_its_best_point(tmp_path):
    result = sweep_app(tmp_path, "x=range(-1,3)", "y=interval(0,1)", "hydra.sweeper.n_trials=3", "+seed=1",
                       "hydra.sweeper.confirm.top_k=1", "hydra.sweeper.confirm.seeds=2")
    assert result.returncode == 0, result.stderr[-3000:]
    confirmations = [t for t in app_study(tmp_path).trials if "confirms" in t.user_attrs]
    assert sorted(t.user_attrs["seed"] for t in confirmations) == [2, 3]
    assert ", the mean of 3 seeds" in result.stdout  # the app ignores its seed: three equal values


def test_a_confirmation_an_older_ftharness_left_waiting_is_failed_by_the_next_sweep_and_run_again(tmp_path):
    """An ftharness before 266d8de enqueued each confirmation, then asked it: killed in between, it left one waiting,
    which the next study ask popped as a study trial under the confirmation's marks."""
    args = ["x=range(-1,3)", "y=interval(0,1)", "+seed=1", "hydra.sweeper.confirm.top_k=1",
            "hydra.sweeper.confirm.seeds=1"]
    assert sweep_app(tmp_path, *args, "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm.top_k=0").returncode == 0
    study = app_study(tmp_path)
    study.enqueue_trial(study.best_trial.params, user_attrs={"confirms": study.best_trial.number, "seed": 2})
    result = sweep_app(tmp_path, *args, "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]
    left, *later = app_study(tmp_path).trials[2:]
    assert (left.state.name, left.user_attrs["reason"]) == ("FAIL", "left waiting by an older ftharness; planned again")
    confirmation, = [t for t in later if "confirms" in t.user_attrs]  # the study's third trial is no confirmation
    assert (confirmation.user_attrs["seed"], confirmation.state.name) == (2, "COMPLETE")
    assert ", the mean of 2 seeds" in result.stdout


def test_a_custom_search_space_that_names_no_function_is_one_line(tmp_path):
    result = sweep_app(tmp_path, "x=range(-1,3)", "hydra.sweeper.custom_search_space=__main__.far_x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "hydra.sweeper.custom_search_space='__main__.far_x': " in result.stderr


def test_a_key_the_app_does_not_have_stops_the_sweep_in_one_line_and_leaves_no_trial_running(tmp_path):
    result = sweep_app(tmp_path, "w=choice(1,2)", "hydra.sweeper.n_trials=3")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line, = [line for line in result.stderr.splitlines() if "'w'" in line]
    assert line.startswith("trial 0 not launched: Could not override 'w'") and "Key 'w' is not in struct" in line
    trial, = app_study(tmp_path).trials
    assert trial.state.name == "FAIL" and "Could not override 'w'" in trial.user_attrs["reason"]


def test_a_metric_the_returned_dict_lacks_fails_its_trials_naming_it(tmp_path):
    result = sweep_app(tmp_path, "returns=dict", "hydra.sweeper.metric=[loss,accuracy]",
                       "hydra.sweeper.direction=[minimize,maximize]", "x=range(-1,3)", "hydra.sweeper.n_trials=2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ("study app: 2 failed trials exceed max_failure_rate=0.5 of 2; last: the task function returned no "
            "accuracy (its keys: loss, size;") in result.stderr
    assert [t.state.name for t in app_study(tmp_path).trials] == ["FAIL", "FAIL"]


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failures_stop_the_sweep_once_they_pass_the_rate_over_the_study(tmp_path, max_failure_rate):
    result = sweep_app(tmp_path, "fail=true", "x=range(-1,3)", "hydra.sweeper.n_trials=4",
                       f"hydra.sweeper.max_failure_rate={max_failure_rate}")
    trials = app_study(tmp_path).trials
    assert all(t.state.name == "FAIL" and t.user_attrs["reason"].startswith("RuntimeError: x=") for t in trials)
    if max_failure_rate < 1:
        assert result.returncode == 1 and len(trials) == 3  # 3 failures are over half of 4
        assert "exceed max_failure_rate=0.5 of 4; last: RuntimeError: x=" in result.stderr
    else:
        assert result.returncode == 0 and len(trials) == 4, result.stderr[-3000:]


@pytest.mark.parametrize("returned, expected", [
    (1, [1.0]), (0.25, [0.25]), ((1, 2.5), [1.0, 2.5]), (OmegaConf.create([3, 4]), [3.0, 4.0]),
    ({"b": 2, "a": 1, "other": "x"}, [1.0, 2.0]), (OmegaConf.create({"a": 5, "b": 6}), [5.0, 6.0]),
    ((1, "n/a"), [1.0, None]),  # told as failed: not a number
])
def test_returned_values_are_read_in_the_order_of_the_metrics(returned, expected):
    metrics = ["a", "b"] if isinstance(returned, dict) or OmegaConf.is_dict(returned) else ["o"] * len(expected)
    assert returned_values(returned, metrics) == expected


@pytest.mark.parametrize("returned, metrics, message", [
    (None, ["o"], "returned no value"),
    ((1, 2, 3), ["a", "b"], "returned 3 values for the study's 2 objectives \\(a, b\\)"),
    ({"a": 1}, ["a", "b"], "returned no b \\(its keys: a;"),
])
def test_a_return_value_that_does_not_match_the_metrics_says_how(returned, metrics, message):
    with pytest.raises(ValueError, match=message):
        returned_values(returned, metrics)


@pytest.mark.parametrize("sweep, distribution, grid", [
    ("range(1,3)", IntDistribution(1, 2), [1, 2]),  # Hydra's range: the stop is not a value
    ("range(0,10,3)", IntDistribution(0, 9, step=3), [0, 3, 6, 9]),
    ("range(5,1,-2)", IntDistribution(3, 5, step=2), [5, 3]),
    ("range(0.5,5.5,step=1)", FloatDistribution(0.5, 4.5, step=1), [0.5, 1.5, 2.5, 3.5, 4.5]),
    ("shuffle(range(1,4))", CategoricalDistribution([1, 2, 3]), None),
])
def test_a_range_is_a_numeric_distribution_over_the_values_the_basic_sweeper_runs(sweep, distribution, grid):
    space = SearchSpace({"k": sweep}, [])
    if grid is None:
        assert set(space.distributions["k"].choices) == set(distribution.choices)
    else:
        assert space.distributions["k"] == distribution and space.grid() == {"k": grid}


def test_an_empty_range_is_refused_naming_it():
    with pytest.raises(SweepConfigError, match=r"k=range\(3,3,1\) has no values"):
        SearchSpace({"k": "range(3,3)"}, [])


@pytest.mark.parametrize("sweep, message", [
    ("interval(1e-3,1e-5)", "k=interval(0.001, 1e-05): allowed: a start no larger than the end"),
    ("tag(log, interval(0, 1e-3))", "k=tag(log, interval(0.0, 0.001)): allowed: a start above 0"),
    ("range(8,64,0)", "k=range(8,64,0): allowed: a step other than 0"),
])
def test_bounds_optuna_or_python_would_refuse_are_refused_naming_the_key(sweep, message):
    with pytest.raises(SweepConfigError, match=re.escape(message)):  # were Optuna's and range()'s tracebacks
        SearchSpace({"k": sweep}, [])


def from_config(**changes) -> StudySweep:
    """The sweep of `hydra.sweeper` as the schema's defaults with `changes`, made as the plugin makes it."""
    conf = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf), {"study_name": "s", "metric": None, **changes})
    return StudySweep.from_config(**{k: v for k, v in conf.items() if k != "_target_"})


def test_without_metric_names_the_objectives_are_numbered_by_direction():
    assert from_config(direction=["minimize", "maximize"]).study.metrics == ["objective_0", "objective_1"]


@pytest.mark.parametrize("changes, message", [
    ({"n_trials": 0}, "hydra.sweeper.n_trials=0: allowed: 1 or more trials"),
    ({"n_jobs": 0}, "hydra.sweeper.n_jobs=0: allowed: 1 or more trials per batch"),
    ({"heartbeat_interval": 0}, "hydra.sweeper.heartbeat_interval=0: allowed: 1 or more seconds"),
    ({"heartbeat_interval": 30, "grace_period": 30},
     "hydra.sweeper.grace_period=30: allowed: more seconds than heartbeat_interval (30)"),
    ({"max_retry": -1}, "hydra.sweeper.max_retry=-1: allowed: 0 (no retry) or more"),
    ({"max_failure_rate": 1.5}, "hydra.sweeper.max_failure_rate=1.5: allowed: a share from 0"),
    ({"direction": ["minimize", "up"]}, "hydra.sweeper.direction='up': allowed: minimize or maximize"),
    ({"direction": []}, "hydra.sweeper.direction=[]: allowed: minimize or maximize"),  # Optuna's traceback
    ({"study_name": ""}, "hydra.sweeper.study_name='' (by default the config's `name`): allowed: a name"),
])
def test_a_count_direction_or_name_it_cannot_mean_is_refused_naming_the_setting(changes, message):
    with pytest.raises(SweepConfigError, match=re.escape(message)):
        from_config(**changes)


@pytest.mark.parametrize("kind, spec, message", [
    ("sampler", {"options": {"bogus": 1}}, "hydra.sweeper.sampler.options: TPESampler.__init__() got an unexpected "
                                           "keyword argument 'bogus'"),
    ("pruner", {"name": "percentile", "options": {"percentile": 200}},
     "hydra.sweeper.pruner.options: Percentile must be between 0 and 100 inclusive"),
])
def test_options_a_named_sampler_or_pruner_refuses_are_one_line_naming_them(kind, spec, message):
    conf = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf)[kind], spec)
    with pytest.raises(SweepConfigError, match=re.escape(message)):
        make_sampler(conf, seed=None) if kind == "sampler" else make_pruner(conf)


@pytest.mark.parametrize("setting, message", [
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0: allowed: 1 or more trials per batch"),  # asked none, waited
    ("x=interval(1,0)", "x=interval(1.0, 0.0): allowed: a start no larger than the end"),  # Optuna's traceback
    ("+hydra.sweeper.pruner.options.bogus=1",  # a traceback, after the study was created
     "hydra.sweeper.pruner.options: MedianPruner.__init__() got an unexpected keyword argument 'bogus'"),
    ("hydra.sweeper.storage=mysql://u:secret@127.0.0.1/db",  # Optuna's ImportError traceback: no MySQL driver here
     "hydra.sweeper.storage=mysql://u:***@127.0.0.1/db: its database driver is not installed here (No module named "
     "'MySQLdb')"),
])
def test_a_wrong_setting_ends_the_command_on_its_line_before_the_study_exists(tmp_path, setting, message):
    result = sweep_app(tmp_path, "y=interval(0,1)", setting)
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == message  # no hint to set HYDRA_FULL_ERROR
    assert not (tmp_path / "outputs" / "studies" / "app.db").exists()


def test_with_hydra_full_error_a_refusal_comes_with_its_stack_trace(tmp_path):
    result = sweep_app(tmp_path, "hydra.sweeper.n_jobs=0", HYDRA_FULL_ERROR="1")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].endswith("hydra.sweeper.n_jobs=0: allowed: 1 or more trials per batch")


def composed_sweeper(cwd: Path, *args: str) -> dict:
    """`hydra.sweeper` as the app's command line composes it (`--cfg hydra`: nothing runs)."""
    result = run_app(cwd, "--cfg=hydra", *args)  # `--cfg` and `-m` exclude each other
    assert result.returncode == 0, result.stderr[-3000:]
    return OmegaConf.to_container(OmegaConf.create(result.stdout).hydra.sweeper)


def test_the_sampler_group_selects_a_sampler_by_name_as_with_hydra_optuna_sweeper(tmp_path):
    assert composed_sweeper(tmp_path, "hydra/sweeper/sampler=nsgaii")["sampler"]["name"] == "nsga2"
    assert composed_sweeper(tmp_path)["sampler"]["name"] == "tpe"


def test_a_sampler_and_a_pruner_by_target_run_a_study(tmp_path):
    result = sweep_app(tmp_path, "hydra.sweeper.sampler._target_=optuna.samplers.TPESampler",
                       "+hydra.sweeper.sampler.options.n_startup_trials=1",
                       "hydra.sweeper.pruner._target_=optuna.pruners.NopPruner", "y=interval(0,1)",
                       "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0")  # unseeded, TPE's second point
    # fell within 1 % of the first (a repeat: told, not counted, a third trial) in 5 % of 400 tries
    assert result.returncode == 0, result.stderr[-3000:]
    assert [t.state.name for t in app_study(tmp_path).trials] == ["COMPLETE", "COMPLETE"]


def test_a_sampler_that_raises_at_ask_stops_the_sweep_in_one_line_and_leaves_no_trial_running(tmp_path):
    result = sweep_app(tmp_path, "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
                       "+hydra.sweeper.sampler.options={search_space:{x:[0,1]}}", "x=range(-1,3)", "y=interval(0,1)")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ("trial 0 not asked: hydra.sweeper.sampler (GridSampler) raised ValueError: The parameter name, y, is not "
            "found in the given grid") in result.stderr
    trial, = app_study(tmp_path).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["reason"].startswith("hydra.sweeper.sampler (GridSampler)")


def test_a_target_is_made_with_its_options_and_the_asks_seed():
    spec = OmegaConf.create({"name": "tpe", "seed": 3, "options": {"n_startup_trials": 2},
                             "_target_": "optuna.samplers.TPESampler"})
    sampler = make_sampler(spec, seed=5)
    assert type(sampler).__name__ == "TPESampler" and sampler._n_startup_trials == 2
    pruner = OmegaConf.create({"name": "median", "options": {"percentile": 25.0}, "evidence": "eval_loss",
                               "report_steps": 4, "warmup": None, "_target_": "optuna.pruners.PercentilePruner"})
    assert type(make_pruner(pruner)).__name__ == "PercentilePruner"


@pytest.mark.parametrize("name, options", [("gp", {"n_startup_trials": 1}), ("cmaes", {"n_startup_trials": 1}),
                                           ("qmc", {}), ("nsga2", {"population_size": 2}), ("tpe", {}), ("random", {})])
def test_every_named_sampler_samples_past_its_random_start(name, options):
    """gp and qmc need scipy, cmaes its own package: without them a study stopped once its random trials were done."""
    spec = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf).sampler, {"name": name, "options": options})
    study = optuna.create_study(sampler=make_sampler(spec, seed=0))
    study.optimize(lambda trial: (trial.suggest_float("x", -2, 2) - 1) ** 2, n_trials=4)
    assert len({t.params["x"] for t in study.trials}) == 4


@pytest.mark.parametrize("target, message", [
    ("optuna.samplers.Nope", "Error locating target 'optuna.samplers.Nope'"),
    ("optuna.samplers.RandomSampler", "unexpected keyword argument 'bogus'"),
])
def test_a_target_that_cannot_be_made_is_one_line_naming_it(target, message):
    spec = OmegaConf.create({"name": "tpe", "seed": None, "options": {"bogus": 1}, "_target_": target})
    with pytest.raises(SweepConfigError, match=f"hydra.sweeper.sampler._target_={target}: .*{message}"):
        make_sampler(spec, seed=None)


def test_importing_the_plugin_and_the_sweep_loop_imports_no_torch():
    code = ("import sys, hydra_plugins.ftharness_sweeper.ftharness_sweeper, ftharness.sweep.loop, "
            "ftharness.report.end_of_sweep; from ftharness.sweep import trial; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("direction, worst", [("minimize", float("inf")), ("maximize", float("-inf"))])
def test_a_report_that_is_not_a_number_is_the_worst_in_the_studys_direction(direction, worst):
    study = optuna.create_study(direction=direction)
    assert finite_or_worst(float("nan"), study) == worst and finite_or_worst(2.5, study) == 2.5


@pytest.mark.parametrize("status, values, reason, line", [
    ("completed", [0.0224259, 3.0], None, "completed 0.02243 3"),
    ("pruned", None, "pruned at step 3 (objective 8.354)", "pruned at step 3 (objective 8.354)"),
    ("failed", None, "RuntimeError: x=3 refused", "failed: RuntimeError: x=3 refused"),
    (None, None, None, "failed"),
])
def test_the_log_line_of_a_told_trial_says_its_status_values_and_reason_once(status, values, reason, line):
    assert told_line(status, values, reason) == line
