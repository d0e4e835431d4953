"""A study answers for the settings it was given: another configuration's study is never joined, the command line
wins over the preset, a point already trained is not trained again, and faults of the storage lose nothing."""

import csv
import json
import math
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from test_sweeper import SEED_WITHOUT_REPEATS, SWEEP, load_study, sweep_dirs, sweep_process

from conftest import compose_config, run_cli
from ftharness.contract import Objective, Status, TrialAttr, TrialSummary
from ftharness.report.runs import study_runs
from ftharness.sweep.asking import current_trials, trained_twin
from ftharness.sweep.confirmation import planned_runs
from ftharness.sweep.heartbeats import StaleTrials, fail_dead_trials, fail_waiting_confirmations, start_with_heartbeat
from ftharness.sweep.optuna_objects import open_storage
from ftharness.sweep.settings import StudySettings
from ftharness.sweep.telling import tell_repeat

STUDY = [*SWEEP, "optim.lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.n_trials=2", SEED_WITHOUT_REPEATS]
# lr up to 1e-2 diverges in longer trials of the tiny model (seen in CI runs: at 300 steps; at 40, both unseeded trials
# of a study, which left nothing to confirm)
CALM_STUDY = [*(arg for arg in STUDY if not arg.startswith("optim.lr=")), "optim.lr=tag(log,interval(1e-4,1e-3))"]
TINY_STUDY = [arg for arg in SWEEP if arg != "hydra/sweeper=ftharness"]  # sweep=<preset> brings the sweeper


def job_folders(cwd: Path, name: str = "default") -> list:
    return [job for sweep in sweep_dirs(cwd, name) for job in sweep.iterdir() if job.is_dir() and job.name.isdigit()]


def test_a_sweep_with_other_settings_never_joins_the_study_of_the_same_name(tmp_path):
    assert run_cli(*STUDY, cwd=tmp_path).returncode == 0
    first = [(t.number, t.params, t.values) for t in load_study(tmp_path).trials]

    other = [*STUDY, "data.train_size=40", "train.max_steps=3"]  # other data, another trial budget
    refused = run_cli(*other, cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    line, = [line for line in refused.stderr.splitlines() if "was run with other settings" in line]
    assert line.startswith("study default in outputs/studies/default.db was run with other settings: "
                           "data.train_size: 48.0 (now 40.0); train.max_steps: 4 (now 3). This sweep is another "
                           "study: give it its own name (name=default-")
    assert [(t.number, t.params, t.values) for t in load_study(tmp_path).trials] == first  # untouched

    name = line.split("(name=")[1].split(")")[0]
    renamed = run_cli(*other, f"name={name}", cwd=tmp_path)
    assert renamed.returncode == 0, renamed.stderr[-3000:]
    assert renamed.stdout.splitlines()[0] == f"new study {name} in outputs/studies/{name}.db: 2 trials"
    assert [t.user_attrs[TrialAttr.SUMMARY]["steps"] for t in load_study(tmp_path, name).trials] == [3, 3]

    again = run_cli(*STUDY, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == \
        "resuming default: 2 of 2 trials exist, nothing to train"
    assert [(t.number, t.params, t.values) for t in load_study(tmp_path).trials] == first


def test_a_key_fixed_on_the_command_line_is_not_searched_and_a_swept_one_replaces_the_presets(tmp_path):
    result = run_cli(*TINY_STUDY, "sweep=default", "lora.r=4", "lora.target_modules=choice(attention,qk)",
                     "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm.top_k=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "lora.r=4 fixed on the command line: not searched" in lines
    assert "lora.target_modules=choice(attention,qk) on the command line: searched in place of the preset's " \
           "choice(all-linear, attention, [q_proj,v_proj])" in lines
    study = load_study(tmp_path, "default-study")
    assert {tuple(sorted(t.params)) for t in study.trials} == {("lora.target_modules", "optim.lr")}
    for job in job_folders(tmp_path, "default-study"):
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert config.lora.r == 4 and config.lora.target_modules in ("attention", "qk")
    assert StudySettings.stored(study).fixed["lora.r"] == 4


def test_a_proposal_equal_to_a_trained_point_is_told_its_result_without_a_job(tmp_path):
    result = run_cli(*SWEEP, "lora.r=choice(2,4)", "hydra.sweeper.sampler.name=random",
                     "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    trained = [t for t in study.trials if t.user_attrs[TrialAttr.STATUS] == Status.COMPLETED]
    repeats = [t for t in study.trials if t.user_attrs[TrialAttr.STATUS] == Status.REPEAT]
    assert sorted(t.params["lora.r"] for t in trained) == [2, 4] and len(job_folders(tmp_path)) == 2
    assert repeats  # the space has 2 points for 3 trials: each extra ask is a repeat, up to n_trials of them
    for repeat in repeats:
        original = study.trials[repeat.user_attrs[TrialAttr.REPEATS]]
        assert repeat.params == original.params and repeat.values == original.values
        assert repeat.state == TrialState.COMPLETE and TrialAttr.RUN_DIR not in repeat.user_attrs
        assert f"trial {repeat.number} (" in result.stdout and \
            f"≈ trial {original.number}: eval_loss {original.value:.3g}, not trained again" in result.stdout
    rows = (sweep_dirs(tmp_path)[0] / "results.md").read_text()
    assert f"repeat | ≈ trial {repeats[0].user_attrs[TrialAttr.REPEATS]}" in rows
    assert json.loads((sweep_dirs(tmp_path)[0] / "best.json").read_text())["best"]["number"] in \
        [t.number for t in trained]


def test_a_twin_is_a_trained_point_within_one_percent_of_each_number_and_equal_in_each_choice():
    study = optuna.create_study()
    space = {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True), "lora.r": CategoricalDistribution([8, 16])}
    told = {}
    for lr, r, status, state in [(1e-3, 8, Status.COMPLETED, TrialState.COMPLETE),
                                 (3e-3, 8, Status.PRUNED, TrialState.PRUNED),
                                 (5e-3, 8, Status.FAILED, TrialState.FAIL)]:
        study.enqueue_trial({"optim.lr": lr, "lora.r": r})
        trial = study.ask(space)
        trial.set_user_attr(TrialAttr.STATUS, status)
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
        told[lr] = trial.number
    for params, twin in [({"optim.lr": 1.0099e-3, "lora.r": 8}, told[1e-3]),  # within 1 %
                         ({"optim.lr": 1.02e-3, "lora.r": 8}, None),  # 2 % apart
                         ({"optim.lr": 1e-3, "lora.r": 16}, None),  # another rank
                         ({"optim.lr": 3e-3, "lora.r": 8}, told[3e-3]),  # a pruned point: told pruned again
                         ({"optim.lr": 5e-3, "lora.r": 8}, None)]:  # a failed point runs again
        study.enqueue_trial(params)
        asked = study.ask(space)
        found = trained_twin(study, asked)
        assert (found.number if found else None) == twin, params
        study.tell(asked, state=TrialState.FAIL)



def test_the_twin_of_a_trial_pruned_after_its_reports_is_told_pruned_with_its_curve():
    study = optuna.create_study()  # a pruned trial's value is its last report: a repeat is told none (horizon.py)
    space = {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    pruned = study.ask(space)
    for step, loss in ((2, 4.2), (6, 4.1)):
        pruned.report(loss, step)
    pruned.set_user_attr(TrialAttr.STATUS, Status.PRUNED)
    pruned.set_user_attr(TrialAttr.STEPS, 6)
    study.tell(pruned, state=TrialState.PRUNED)
    study.enqueue_trial(pruned.params)
    repeat = study.ask(space)
    line = tell_repeat(study, repeat, trained_twin(study, repeat), ["eval_loss"])
    assert line == f"≈ trial {pruned.number}: pruned at step 6, not trained again"
    told = study.trials[repeat.number]
    assert told.state == TrialState.PRUNED and told.intermediate_values == {2: 4.2, 6: 4.1}
    assert told.user_attrs[TrialAttr.STATUS] == Status.REPEAT

def test_the_settings_of_a_study_leave_out_its_searched_keys_and_what_changes_no_result():
    settings = StudySettings.of(compose_config("eval.batch_size=7", "name=x"), ["optim.lr", "lora.alpha"])
    assert "optim.lr" not in settings.fixed and "lora.alpha" not in settings.fixed and settings.fixed["lora.r"] == 16
    assert not {"name", "eval.batch_size", "tracker.mode", "cache_dir"} & set(settings.fixed)
    assert settings.fixed["model.name_or_path"] == "embedded:tiny-llama" and settings.fixed["train.max_steps"] == 4

    other = StudySettings({**settings.fixed, "lora.r": 8, "data.path": "a.json", "model.name_or_path": "m",
                           "train.max_steps": 9}, [*settings.searched, "lora.dropout"])
    added_later = StudySettings({**settings.fixed, "train.new_key": 1}, settings.searched)  # a newer ftharness
    assert settings.differences(added_later) == []
    assert settings.differences(other) == [
        "data.path: null (now a.json)", "lora.dropout: 0.05 (now searched)", "lora.r: 16 (now 8)",
        "model.name_or_path: embedded:tiny-llama (now m)", "train.max_steps: 4 (now 9)"]


def make_trial(study: optuna.Study, run_dir: Path, summary: TrialSummary = None, **attrs) -> optuna.trial.Trial:
    trial = study.ask({"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)})
    run_dir.mkdir(parents=True)
    if summary is not None:
        summary.write(run_dir)
    for key, value in {TrialAttr.RUN_DIR: str(run_dir), **attrs}.items():
        trial.set_user_attr(key, value)
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def test_a_dead_trial_is_told_from_its_summary_retried_without_one_and_a_dead_confirmation_is_not_retried(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1,
                           stale_trial_callback=StaleTrials(max_retry=2))
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("metrics", ["eval_loss"])
    done = TrialSummary(Status.COMPLETED, steps=4, after={"eval_loss": 0.5},
                        objective=Objective("eval_loss", "minimize", 0.5))
    finished = make_trial(study, tmp_path / "0", done)  # its sweep process died before telling it
    killed = make_trial(study, tmp_path / "1")  # its job died mid-training
    confirmation = make_trial(study, tmp_path / "2", **{TrialAttr.CONFIRMS: 0, TrialAttr.SEED: 43})
    time.sleep(2.5)
    fail_dead_trials(study)

    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.FAIL] * 3
    copies = {t.system_attrs["failed_trial"]: t for t in trials[3:]}
    assert set(copies) == {finished.number, killed.number}  # the confirmation is planned again by the next run
    assert copies[finished.number].state == TrialState.COMPLETE and copies[finished.number].value == 0.5
    assert copies[killed.number].state == TrialState.WAITING
    assert sorted(t.number for t in current_trials(study)) == [3, 4]
    assert confirmation.number not in [t.number for t in current_trials(study)]
    reasons = {run.name: run.reason for run in study_runs(study)}  # the report's table says what became of them
    assert reasons["trial 1"] == "its sweep process died (no heartbeat); retried as trial 4"
    assert reasons["trial 2"] == "its sweep process died (no heartbeat)" and "trial 0" not in reasons  # told on 3


def test_a_failed_trial_of_a_study_made_by_other_means_gets_no_reason_made_up():
    """`python -m ftharness.study` reads any study: only the sweeper's studies fail trials solely when they die."""
    study = optuna.create_study()
    study.tell(study.ask(), state=TrialState.FAIL)
    run, = study_runs(study)
    assert (run.state, run.reason) == ("failed", "")


def test_a_confirmation_starts_running_with_its_own_marks_and_pops_no_waiting_trial(tmp_path):
    """An enqueued confirmation was popped by whichever ask came next: one left waiting by a sweep killed between
    enqueueing and asking it gave the next confirmation its marks (seed 43 for a run with seed 44)."""
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage,
                                sampler=optuna.samplers.GridSampler({"optim.lr": [1e-4, 1e-3]}, seed=0))
    asked = study.ask({"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)})
    study.tell(asked, 0.5)
    point = study.trials[0]
    study.enqueue_trial(point.params, user_attrs={TrialAttr.CONFIRMS: 0, TrialAttr.SEED: 43})  # the killed sweep's
    marks = {TrialAttr.CONFIRMS: 0, TrialAttr.SEED: 44}
    trial = start_with_heartbeat(study, storage, point, marks)
    confirmation = study.trials[trial.number]
    assert (confirmation.number, confirmation.state, confirmation.params, confirmation.user_attrs) == (
        2, TrialState.RUNNING, point.params, marks)
    assert "grid_id" not in confirmation.system_attrs  # the grid sampler gave it no point of its own
    assert study.trials[1].state == TrialState.WAITING
    time.sleep(2.5)  # SQLite keeps heartbeats to the second: 1.5 s past one may read as 1 s, within grace_period
    fail_dead_trials(study)  # its first heartbeat came with it: a process that dies now leaves no trial for good
    assert study.trials[trial.number].state == TrialState.FAIL


def test_a_confirmation_left_waiting_by_an_older_ftharness_is_failed_and_planned_again_not_popped_by_an_ask(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    study.tell(study.ask({"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}), 0.5)
    point = study.trials[0]
    study.enqueue_trial(point.params, user_attrs={TrialAttr.CONFIRMS: 0, TrialAttr.SEED: 43})  # then killed
    fail_waiting_confirmations(study, storage)
    left = study.trials[1]
    assert (left.state, left.user_attrs[TrialAttr.STATUS]) == (TrialState.FAIL, Status.FAILED)
    assert left.user_attrs[TrialAttr.REASON] == "left waiting by an older ftharness; planned again"
    assert [(p.number, seed) for p, seed in planned_runs(study, top_k=1, seeds=1, base_seed=42)] == [(0, 43)]
    assert TrialAttr.CONFIRMS not in study.ask().user_attrs  # a new trial, not the stale confirmation
    study.enqueue_trial(point.params)  # a study trial that waits (a retry) is left alone
    fail_waiting_confirmations(study, storage)
    assert study.trials[-1].state == TrialState.WAITING


def test_a_confirmation_killed_on_an_rdb_storage_is_finished_by_the_rerun_and_never_becomes_a_study_trial(tmp_path):
    args = [*CALM_STUDY, "train.max_steps=40", "hydra.sweeper.pruner.name=none", "hydra.sweeper.confirm.top_k=1",
            "hydra.sweeper.confirm.seeds=2", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    process = sweep_process(tmp_path, *args)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not list(tmp_path.glob(
            "outputs/multirun/*/*/2/metrics.jsonl")):  # jobs 0, 1: the study's trials; 2: the first confirmation
        time.sleep(0.2)
    assert process.poll() is None, "the sweep ended before its first confirmation trained"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = load_study(tmp_path).trials[-1]
    assert killed.state == TrialState.RUNNING and killed.user_attrs[TrialAttr.CONFIRMS] is not None
    time.sleep(3)  # past the grace period, as a user rerunning later

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert not {TrialState.RUNNING, TrialState.WAITING} & {t.state for t in study.trials}
    assert [t.number for t in current_trials(study)] == [0, 1]  # the study's own trials, no copy of the killed one
    confirmed = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)  # a result: diverged
                 and TrialAttr.CONFIRMS in t.user_attrs]  # counts (40 steps of the tiny model did, once, under load)
    told = [(t.number, t.state.name, t.user_attrs.get(TrialAttr.SEED), t.user_attrs.get(TrialAttr.REASON))
            for t in study.trials]  # shown if it fails: it did once, under load, with seed 44 alone
    assert sorted(t.user_attrs[TrialAttr.SEED] for t in confirmed) == [43, 44], told
    assert study.trials[killed.number].state == TrialState.FAIL
    assert "resuming default: 2 of 2 trials exist, nothing to train" in result.stdout


def test_a_postgresql_server_stopped_mid_trial_stops_the_sweep_in_one_line_and_the_rerun_keeps_the_trial(
        tmp_path, postgres_server):
    args = [*CALM_STUDY, f"hydra.sweeper.storage={postgres_server.url}", "train.max_steps=300", "train.eval_steps=20",
            "train.compile=false", "train.divergence_factor=0", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=2"]  # 300 steps would compile under auto (~30 s) and give the divergence
    # check 300 chances to stop the trial: neither is what this test of the storage is about
    process = sweep_process(tmp_path, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not list(tmp_path.glob(
            "outputs/multirun/*/*/0/metrics.jsonl")):
        time.sleep(0.2)
    postgres_server.stop()
    stdout, stderr = (stream.decode() for stream in process.communicate(timeout=300))
    assert process.returncode == 1 and "Traceback" not in stdout + stderr, stderr[-3000:]
    assert "the study's storage stopped answering" in stderr + stdout  # the trial's one warning: it trains on
    stopped, = [line for line in stderr.splitlines() if "stopped answering (" in line and line.startswith("study")]
    assert stopped.startswith("study default: its storage postgresql://postgres@127.0.0.1:") and \
        stopped.endswith("The trials told so far are kept; once it answers again, run the same command to resume")
    job, = job_folders(tmp_path)
    assert TrialSummary.read(job).status == Status.COMPLETED and TrialSummary.read(job).steps == 300

    postgres_server.start()
    time.sleep(3)  # past the grace period of the trial whose sweep stopped
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="default", storage=postgres_server.url)
    told = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]  # a diverged trial is a
    # result too
    assert len(told) == 2 and len(job_folders(tmp_path)) == 2  # the finished trial is told, not trained again
    recovered, = [t for t in told if t.system_attrs.get("failed_trial") == 0]
    assert recovered.user_attrs[TrialAttr.RUN_DIR] == str(job.resolve())
    assert math.isclose(recovered.value, TrialSummary.read(job).after["eval_loss"])
    rows = list(csv.DictReader((sweep_dirs(tmp_path)[-1] / "results.csv").open()))
    assert sorted(row["run"] for row in rows) == sorted(f"trial {t.number}" for t in told)  # the dead one left out


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_the_study_command_prints_the_settings_a_study_answers_for(tmp_path, storage, capsys):
    from ftharness.study import main as study_main

    url = f"sqlite:///{tmp_path}/s.db" if storage == "sqlite" else f"journal:{tmp_path}/s.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    StudySettings({"lora.r": 8, "data.path": None}, ["optim.lr"]).store(study)
    study_main([url if storage == "journal" else str(tmp_path / "s.db"), "--settings", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "lora.r=8\ndata.path=null\nsearched: optim.lr" in out


def test_the_study_command_says_in_one_line_what_it_cannot_read_and_makes_no_file(tmp_path):
    """Were: an empty .db (or journal) made where none was, then "holds 0 studies"; a traceback for a file that is no
    storage and for a name the storage lacks."""
    from ftharness.study import main as study_main

    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path}/two.db")
    (tmp_path / "notes.txt").write_text("not\na storage\n")  # a journal's last line may be half written: two
    for args, said in (([f"{tmp_path}/none.db"], "none.db: no such file"),
                       ([f"journal:{tmp_path}/none.log"], "none.log: no such file"),
                       ([f"{tmp_path}/notes.txt"], "notes.txt: not read as an Optuna storage (file is not a database)"),
                       ([f"journal:{tmp_path}/notes.txt"], "notes.txt: not read as an Optuna storage (Expecting value"),
                       ([f"{tmp_path}/two.db"], "two.db holds 2 studies (a, b): pass --study NAME"),
                       ([f"{tmp_path}/two.db", "--study", "c"], "two.db holds 2 studies (a, b), not 'c'"),
                       (["mysql://u:secret@127.0.0.1/db"], "mysql://u:***@127.0.0.1/db: its database driver is not "
                                                           "installed here (No module named 'MySQLdb')")):
        with pytest.raises(SystemExit, match=re.escape(said)):
            study_main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "two.db"]


def test_a_report_of_a_sweep_whose_storage_moved_is_one_line(tmp_path):
    from ftharness.report.__main__ import main as report_main

    (tmp_path / "study.json").write_text(json.dumps({"study_name": "s", "storage": f"sqlite:///{tmp_path}/gone.db"}))
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path}/study.json names study 's' in {tmp_path}/gone.db: "
                                                   "no such file")):
        report_main([str(tmp_path)])
    assert not (tmp_path / "gone.db").exists()


def test_a_storage_that_does_not_answer_at_the_start_stops_the_sweep_in_one_line_without_its_password(tmp_path):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install psycopg[binary] (the test extra)")
    result = run_cli(*STUDY, "hydra.sweeper.storage=postgresql://optuna:secret@127.0.0.1:1/optuna", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("hydra.sweeper.storage=postgresql://optuna:***@127.0.0.1:1/optuna: the storage "
                                    "does not answer (connection failed: "), result.stderr
    assert "secret" not in result.stdout + result.stderr


def raced_create_all(monkeypatch, error: str) -> list:
    """MetaData.create_all (Optuna's, making its tables) that fails its first call with `error`, after making the
    tables as another process would have; returns the list of its calls."""
    create_all, calls = sqlalchemy.MetaData.create_all, []

    def first_call_fails(self, *args, **kwargs):
        calls.append(args)
        create_all(self, *args, **kwargs)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception(error))

    monkeypatch.setattr(sqlalchemy.MetaData, "create_all", first_call_fails)
    return calls


def test_an_rdb_storage_whose_tables_another_process_made_meanwhile_is_opened_again(tmp_path, monkeypatch):
    calls = raced_create_all(monkeypatch, "table studies already exists")
    optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert len(calls) == 2


def test_an_rdb_storage_that_fails_otherwise_is_not_opened_again(tmp_path, monkeypatch):
    calls = raced_create_all(monkeypatch, "unable to open database file")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="unable to open database file"):
        open_storage(f"sqlite:///{tmp_path}/s.db")
    assert len(calls) == 1
