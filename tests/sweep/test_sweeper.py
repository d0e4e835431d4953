"""The Optuna sweeper through the real CLI on the tiny model: grid and TPE studies, pruning, divergence, resume
after kill -9, two processes on one SQLite or PostgreSQL storage (two machines: a report from the database alone),
joblib and submitit launchers, result tables and the dashboard."""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from conftest import CONF, DIVERGING, EXPLODING_ALPHA, TINY, run_cli
from ftharness.config.schema import SWEEPS_DIR, register_schema
from ftharness.contract import TrialAttr
from ftharness.report.__main__ import main as report_main
from ftharness.report.results import results_of
from ftharness.report.runs import load_runs, study_runs
from ftharness.study import main as study_main
from ftharness.sweep.asking import counted, current_trials
from ftharness.sweep.best import best
from ftharness.sweep.loop import StudySweep
from ftharness.sweep.optuna_objects import make_pruner, warmup_steps
from ftharness.sweep.pruning import PruningCallback, thin_curve
from ftharness.sweep.space import SearchSpace
from ftharness.ui.console import SweepInterrupted
from hydra_plugins.ftharness_sweeper.config import FtharnessSweeperConf

SWEEP = ["-m", *TINY, "eval.max_new_tokens=0", "hydra/sweeper=ftharness"]


def load_study(cwd: Path, name: str = "default") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/outputs/studies/{name}.db")


def states(study: optuna.Study) -> list:
    return [t.state.name for t in study.trials]


def sweep_dirs(cwd: Path, name: str = "default") -> list:
    return sorted((cwd / "outputs" / "multirun" / name).iterdir())


def _ctrl_c_by_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job (`cmd &`) would pass on SIG_IGN


def sweep_process(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
    return subprocess.Popen([sys.executable, "-m", "ftharness", *args], cwd=cwd, preexec_fn=_ctrl_c_by_default,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0"}, **streams)


@pytest.mark.parametrize("preset", sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
def test_every_preset_composes_and_parses_its_search_space(preset):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sweep={preset}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("FtharnessSweeper") and cfg.hydra.sweeper.n_trials >= 1
    params = dict(cfg.hydra.sweeper.params)
    assert SearchSpace(params, []).distributions or preset == "compare"  # compare: the command line's sweeps


def test_search_space_writes_lists_ratios_and_odd_strings_back_as_overrides():
    space = SearchSpace({"lora.target_modules": "choice([q_proj,v_proj],attention,'a,b c')",
                         "lora.r": "choice(8,16)", "lora.alpha/lora.r": "choice(0.5,2)"}, [])
    assert space.distributions["lora.target_modules"].choices == ("[q_proj,v_proj]", "attention", "a,b c")
    params = {"lora.target_modules": "a,b c", "lora.r": 16, "lora.alpha/lora.r": 0.5}
    assert space.overrides(params) == ["lora.target_modules=a\\,b\\ c", "lora.r=16", "lora.alpha=8"]


def test_grid_study_round_trips_module_lists_and_a_rerun_adds_nothing(tmp_path):
    args = [*SWEEP, "hydra.sweeper.sampler.name=grid", "lora.target_modules=choice([q_proj,v_proj],attention)"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE", "COMPLETE"]  # the budget (20) is capped at the grid's 2 points
    for trial in study.trials:
        adapter = json.loads((Path(trial.user_attrs["weights_dir"]) / "adapter_config.json").read_text())
        expected = {"[q_proj,v_proj]": ["q_proj", "v_proj"], "attention": ["k_proj", "o_proj", "q_proj", "v_proj"]}
        assert sorted(adapter["target_modules"]) == expected[trial.params["lora.target_modules"]]
    sweep_dir, = sweep_dirs(tmp_path)
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    assert [r["state"] for r in rows] == ["completed", "completed"] and all(r["steps"] == "4" for r in rows)
    best = json.loads((sweep_dir / "best.json").read_text())["best"]
    assert best["values"]["eval_loss"] == min(t.value for t in study.trials) and Path(best["weights_dir"]).is_dir()

    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0 and len(load_study(tmp_path).trials) == 2
    assert not [p for p in sweep_dirs(tmp_path)[-1].iterdir() if p.is_dir() and p.name.isdigit()]

    out = tmp_path / "report"
    study_main([str(tmp_path / "outputs" / "studies" / "default.db"), "--out", str(out)])
    assert (out / "results.md").read_text().count("| completed |") == 2 and (out / "best.json").is_file()


def test_tpe_study_counts_n_trials_as_the_total_and_draws_new_points_on_resume(tmp_path):
    args = [*SWEEP, "optim.lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.sampler.seed=0"]
    assert run_cli(*args, "hydra.sweeper.n_trials=2", cwd=tmp_path).returncode == 0
    result = run_cli(*args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE"] * 3
    assert len({t.params["optim.lr"] for t in study.trials}) == 3


@pytest.mark.parametrize("evidence", [
    [],  # the eval loss at every train.eval_steps (2)
    ["hydra.sweeper.pruner.evidence=train_loss", "hydra.sweeper.pruner.report_steps=2", "train.eval_steps=0"]])
def test_bad_learning_rates_are_pruned_on_the_eval_loss_or_on_the_loss_of_unseen_batches(tmp_path, evidence):
    result = run_cli(*SWEEP, "train.max_steps=6", "hydra.sweeper.sampler.name=grid", *evidence,
                     "optim.lr=choice(3e-2,1e-2,1e-6,1e-7)", "+hydra.sweeper.pruner.options.n_startup_trials=1",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["optim.lr"] < 1e-4 for t in pruned)
    name = "train_loss" if evidence else "eval_loss"
    for trial in pruned:
        run_dir = Path(trial.user_attrs["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "pruned" and summary["steps"] < 6
        assert trial.user_attrs["reason"].startswith(f"pruned at step {summary['steps']} ({name} ")
        evaluated = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").open()) if r["kind"] == "eval"]
        assert evaluated == ([0, summary["steps"]] if evidence else list(range(0, summary["steps"] + 1, 2)))
    assert all(sorted(t.intermediate_values) == [2, 4, 6] for t in study.trials if t.state.name == "COMPLETE")


def test_a_diverging_trial_is_told_as_infeasible_with_its_reason_and_the_study_goes_on(tmp_path):
    """Diverged is a result about the point: pruned with a violated constraint, which TPE ranks below every feasible
    trial (a FAIL would teach the sampler nothing), and not a failure that counts against max_failure_rate."""
    result = run_cli(*SWEEP, *DIVERGING, "hydra.sweeper.sampler.name=grid", "hydra.sweeper.max_failure_rate=0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.params["lora.alpha"]: t for t in load_study(tmp_path).trials}
    exploded = trials[int(EXPLODING_ALPHA)]
    assert trials[16].state.name == "COMPLETE" and trials[16].constraints == {}
    assert exploded.state.name == "PRUNED" and exploded.user_attrs["status"] == "diverged"
    assert exploded.constraints == {"diverged": 1.0}
    assert "diverged at step" in exploded.user_attrs["reason"] and exploded.user_attrs["steps"] < 6


class _Trial:
    """What PruningCallback needs of an Optuna trial: it records the reports and prunes when told to; its study
    has no completed trials to compare with."""

    def __init__(self, prune_at: int):
        self.reports, self.prune_at = [], prune_at
        self.study = SimpleNamespace(get_trials=lambda **kwargs: [], pruner=None)

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.reports[-1][0] >= self.prune_at


def _pruner_spec(**settings) -> DictConfig:
    """hydra.sweeper.pruner as a job sees it: the schema's defaults and `settings`."""
    return OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf).pruner, settings)


def test_train_loss_evidence_is_the_mean_of_each_window_and_stops_once_rows_repeat():
    trial = _Trial(prune_at=100)
    callback = PruningCallback(trial, sign=-1.0, spec=_pruner_spec(evidence="train_loss", report_steps=2))
    control = SimpleNamespace(should_training_stop=False)
    for step, loss in enumerate([4.0, 2.0, 3.0, 1.0, 0.5, 0.5], start=1):
        state = SimpleNamespace(global_step=step, max_steps=8, epoch=step / 4)
        callback.on_log(None, state, control, logs={"loss": loss})
    assert trial.reports == [(2, -3.0), (4, -2.0)]  # negated for a maximizing study; epoch 1.25 on: nothing
    callback.on_evaluate(None, SimpleNamespace(global_step=4, max_steps=8), control, metrics={"eval_loss": 9.0})
    assert len(trial.reports) == 2 and not control.should_training_stop  # evaluations are not its evidence

    pruning = PruningCallback(_Trial(prune_at=2), sign=1.0, spec=_pruner_spec(evidence="train_loss", report_steps=2))
    for step in (1, 2):
        pruning.on_log(None, SimpleNamespace(global_step=step, max_steps=8, epoch=0.1 * step), control,
                       logs={"loss": 5.0})
    assert control.should_training_stop and pruning.reason == "pruned at step 2 (train_loss 5)"


def test_a_trial_is_not_pruned_at_its_last_step():
    trial, control = _Trial(prune_at=0), SimpleNamespace(should_training_stop=False)
    pruning = PruningCallback(trial, sign=1.0, spec=_pruner_spec(evidence="train_loss", report_steps=1))
    pruning.on_log(None, SimpleNamespace(global_step=4, max_steps=4, epoch=0.5), control, logs={"loss": 5.0})
    assert trial.reports == [(4, 5.0)] and not control.should_training_stop and pruning.status is None


def test_a_pruner_warmup_share_becomes_steps_of_the_trial_it_judges():
    assert [warmup_steps(0.5, 12), warmup_steps(0.5, 13), warmup_steps(0.01, 12), warmup_steps(4, 12)] == [6, 7, 1, 4]
    study = optuna.create_study()
    for value in (1.0, 2.0):  # two completed trials that reported at every step
        trial = study.ask()
        for step in range(1, 13):
            trial.report(value, step)
        study.tell(trial, value)
    study.pruner = make_pruner(_pruner_spec(name="median", warmup=0.5, options={"n_startup_trials": 2}), total_steps=12)
    bad = study.ask()
    decisions = []
    for step in range(1, 9):
        bad.report(9.0, step)
        decisions.append(bad.should_prune())
    assert decisions == [False] * 5 + [True] * 3  # judged from step 6 of 12 on
    assert make_pruner(_pruner_spec(name="successive_halving", warmup=0.25), total_steps=12)._min_resource == 3


MEDIAN_OF_ONE = ["+hydra.sweeper.pruner.options.n_startup_trials=1"]
HALVING = ["hydra.sweeper.pruner.name=successive_halving", "+hydra.sweeper.pruner.options.reduction_factor=2"]


@pytest.mark.parametrize("length,pruner,compared", [
    (["train.max_steps=6"], MEDIAN_OF_ONE, r"the median of 1 completed trials at step 3: [\d.]+"),
    (["train.max_steps=-1", "train.epochs=1"], MEDIAN_OF_ONE, r"the median of 1 completed trials at step 3: [\d.]+"),
    (["train.max_steps=6"], HALVING, r"not among the best 1/2 of the 2 trials that reached step 3")])
def test_a_trial_takes_its_pruner_warmup_from_the_steps_its_trainer_plans(tmp_path, length, pruner, compared):
    """48 training rows in batches of 8: one epoch is 6 steps too. A learning rate that does not learn (run second:
    the grid's order at sampler seed 1) is pruned at the first step the warm-up allows (half of 6: the median's
    n_warmup_steps, successive halving's first rung), never before, and its reason names what it was held against."""
    result = run_cli(*SWEEP, *length, "train.eval_steps=0", "hydra.sweeper.sampler.name=grid",
                     "hydra.sweeper.sampler.seed=1", "optim.lr=choice(1e-2,1e-9)",
                     "hydra.sweeper.pruner.evidence=train_loss", "hydra.sweeper.pruner.report_steps=1",
                     "hydra.sweeper.pruner.warmup=0.5", *pruner, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.params["optim.lr"]: t for t in load_study(tmp_path).trials}
    assert trials[1e-2].state.name == "COMPLETE" and max(trials[1e-2].intermediate_values) == 6
    pruned = trials[1e-9]
    assert pruned.state.name == "PRUNED" and pruned.user_attrs["steps"] == 3, pruned.user_attrs["reason"]
    assert re.fullmatch(rf"pruned at step 3 \(train_loss [\d.]+; {compared}\)", pruned.user_attrs["reason"])


def test_a_trial_asked_in_a_race_with_another_sweep_process_is_told_as_surplus_and_never_counted():
    """Two processes that ask at the same moment: the later trial number over the budget, or on a grid point that an
    earlier trial took, gives its trial up (on one process here, the race's outcome made by hand)."""
    conf = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf), {"study_name": "s", "metric": "eval_loss",
                                                                        "direction": "minimize",
                                                                        "sampler": {"name": "grid", "seed": 0}})
    sweeper = StudySweep.from_config(**{k: v for k, v in conf.items() if k != "_target_"})
    space = SearchSpace({"optim.lr": "choice(1e-3,2e-3,3e-3)"}, [])
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    first = sweeper._ask(study, storage, space, budget=3)
    study.enqueue_trial(first.params)  # the other process's grid sampler, seeded alike, picks the same point
    assert sweeper._ask(study, storage, space, budget=3) is None
    second, third = sweeper._ask(study, storage, space, budget=3), sweeper._ask(study, storage, space, budget=3)
    assert len({first.params["optim.lr"], second.params["optim.lr"], third.params["optim.lr"]}) == 3
    assert sweeper._ask(study, storage, space, budget=3) is None  # the budget was used up meanwhile
    surplus = [t for t in study.trials if t.user_attrs.get("status") == "surplus"]
    assert [t.state.name for t in surplus] == ["FAIL", "FAIL"] and "grid point" in surplus[0].user_attrs["reason"]
    assert counted(study) == 3 and [t.number for t in current_trials(study)] == [0, 2, 3]
    study.sampler = optuna.samplers.RandomSampler()  # a done grid sampler stops the study: only optimize() may
    for trial in (first, second, third):
        study.tell(trial, 1.0)
    assert [run.name for run in study_runs(study)] == ["trial 0", "trial 2", "trial 3"]


def interrupt_second_trial(cwd: Path, args: list, sig: int, **popen) -> subprocess.Popen:
    """Start a study sweep and send `sig` once its second trial trains (the first one is done)."""
    process = sweep_process(cwd, *args, **popen)
    deadline = time.time() + 300
    second_trial_trains = "outputs/multirun/*/*/1/metrics.jsonl"
    while time.time() < deadline and process.poll() is None and not list(cwd.glob(second_trial_trains)):
        # until the second trial's job has evaluated step 0 (the study exists, one trial is done); polled often: the
        # job's 20 steps take ~0.8 s here, and a signal that lands after them stops the next trial instead
        time.sleep(0.02)
    process.send_signal(sig)
    return process


# Seeded: unseeded, an lr within 1 % of a trained one's is a repeat, told without a job and not counted: one more
# trial, the numbers shifted (~2.6 % of these studies). The sweeper seeds trial k's ask with seed + k; seed 2's draws
# for trials 0-5 lie 7 % of the range apart or more (seed 0's for trials 0 and 3: 0.2 %, a repeat)
SEED_WITHOUT_REPEATS = "hydra.sweeper.sampler.seed=2"
RESUMED_STUDY = [*SWEEP, "train.max_steps=20", "optim.lr=tag(log,interval(1e-4,1e-3))", "hydra.sweeper.n_trials=3",
                 SEED_WITHOUT_REPEATS]


def test_a_study_killed_mid_trial_resumes_without_losing_or_rerunning_trials(tmp_path):
    args = [*RESUMED_STUDY, "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    interrupt_second_trial(tmp_path, args, signal.SIGKILL).wait()
    before = load_study(tmp_path).trials
    killed = before[-1]
    assert killed.state.name == "RUNNING" and {t.state.name for t in before[:-1]} == {"COMPLETE"}

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    after = load_study(tmp_path).trials
    assert sorted(t.state.name for t in after) == ["COMPLETE"] * 3 + ["FAIL"], [t.user_attrs for t in after]
    assert after[killed.number].state.name == "FAIL"
    assert [t.datetime_complete for t in after[:killed.number]] == [t.datetime_complete for t in before[:-1]]
    retried = [t for t in after if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"


def test_ctrl_c_records_the_trial_as_interrupted_at_once_and_the_rerun_retries_it(tmp_path):
    args = [*RESUMED_STUDY, "hydra.sweeper.grace_period=3600"]  # a retry that waited for the heartbeat's grace
    # would never come
    process = interrupt_second_trial(tmp_path, args, signal.SIGINT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = (stream.decode() for stream in process.communicate(timeout=120))
    assert process.returncode == 130 and "Traceback" not in stdout + stderr, stderr[-3000:]
    assert "interrupted in trial 1; run the same command to resume" in stdout.splitlines(), stdout[-3000:]
    before = load_study(tmp_path).trials
    interrupted = before[1]
    assert [t.state.name for t in before] == ["COMPLETE", "FAIL", "WAITING"], (stdout[-3000:], stderr[-3000:])
    assert interrupted.user_attrs["status"] == "interrupted" and before[2].params == interrupted.params
    summary = json.loads((Path(interrupted.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "interrupted"

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming default: 1 of 3 trials exist, 2 to go; first trial 1 again (interrupted)" in result.stdout
    after = load_study(tmp_path).trials
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert after[2].params == interrupted.params and after[2].system_attrs["failed_trial"] == 1
    sweep_dir = sweep_dirs(tmp_path)[-1]
    rows = {r["run"]: r for r in csv.DictReader((sweep_dir / "results.csv").open())}
    assert rows["trial 1"]["state"] == "interrupted" and rows["trial 2"]["state"] == "completed"


class _LauncherBrokenByCtrlC:
    """Hydra's launcher as Ctrl-C left it once (the signal landed inside OmegaConf while it composed a job)."""

    def launch(self, batch, initial_job_idx):
        raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")


@pytest.mark.parametrize("ctrl_c", [True, False])
def test_an_error_raised_by_ctrl_c_inside_the_launcher_is_an_interruption_and_any_other_a_failure(
        tmp_path, monkeypatch, ctrl_c):
    monkeypatch.setattr("ftharness.sweep.loop.ctrl_c_pressed", lambda: ctrl_c)
    conf = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf), {"study_name": "s", "metric": "eval_loss"})
    sweeper = StudySweep.from_config(**{k: v for k, v in conf.items() if k != "_target_"})
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.num}"}}})
    sweeper.launcher, sweeper.validate_batch_is_legal = _LauncherBrokenByCtrlC(), lambda batch: None
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-3)})
    with pytest.raises(SweepInterrupted if ctrl_c else AttributeError):
        sweeper._launch(study, storage, [trial], [["optim.lr=5e-4"]], 0)
    told = study.trials[0]
    assert told.state.name == "FAIL"
    assert told.user_attrs["status"] == ("interrupted" if ctrl_c else "failed")
    assert [t.state.name for t in study.trials[1:]] == (["WAITING"] if ctrl_c else [])  # queued for the next run


def test_a_pruned_study_through_submitit_jobs_in_parallel_resumes_after_its_launcher_is_killed(tmp_path):
    """submitit's local executor: each trial a process of its own, through the code path of SLURM jobs."""
    args = [*SWEEP, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "train.max_steps=6",
            "hydra.sweeper.sampler.name=grid", "hydra.sweeper.sampler.seed=4",  # asks 3e-2 and 1e-2 first
            "optim.lr=choice(3e-2,1e-2,1e-6,1e-7)", "+hydra.sweeper.pruner.options.n_startup_trials=1",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    killed = interrupt_second_trial(tmp_path, args, signal.SIGKILL, start_new_session=True)
    killed.wait()
    os.killpg(killed.pid, signal.SIGKILL)  # its jobs too, as when a machine dies
    assert "RUNNING" in states(load_study(tmp_path))
    # A rerun within the grace period still counts the killed trials as running and asks the two low rates first,
    # with no completed trial to prune them against (a CI run did): rerun after it, as a user would.
    time.sleep(3)

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert not {"RUNNING", "WAITING"} & set(states(study)), states(study)
    told = [t for t in study.trials if t.state.name != "FAIL"]
    assert len(told) == 4 and "PRUNED" in states(study) and "COMPLETE" in states(study)
    assert all(t.user_attrs["status"] in ("completed", "pruned") for t in told)
    failed = [t.number for t in study.trials if t.state.name == "FAIL"]
    assert failed and {t.system_attrs.get("failed_trial") for t in told} >= set(failed)  # the killed are retried


def test_two_sweep_processes_share_one_sqlite_study_and_one_folder_without_duplicates(tmp_path):
    """One sweep folder for both, as two sweeps started in the same second share one, or machines given a shared
    folder: each trial's job has a folder of its own, with that trial's point. Started together, both set up the
    storage at once (open_storage opens it again if the other created its tables meanwhile). (PostgreSQL: the
    two-machines test below.)"""
    args = [*SWEEP, "hydra.sweeper.sampler.name=grid", "optim.lr=choice(1e-3,2e-3,3e-3,4e-3)",
            "hydra.sweep.dir=outputs/multirun/default/shared"]
    consoles = [(tmp_path / f"sweep_{i}.log").open("w") for i in (1, 2)]
    processes = [sweep_process(tmp_path, *args, stdout=console, stderr=subprocess.STDOUT) for console in consoles]
    codes = [process.wait(timeout=600) for process in processes]
    for console in consoles:
        console.close()
    assert codes == [0, 0], [Path(console.name).read_text()[-3000:] for console in consoles]
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{tmp_path}/outputs/studies/default.db")
    assert [s for t, s in zip(study.trials, states(study)) if t.user_attrs["status"] != "surplus"] == ["COMPLETE"] * 4
    trials = current_trials(study)
    assert sorted(t.params["optim.lr"] for t in trials) == [1e-3, 2e-3, 3e-3, 4e-3]
    folders = [Path(t.user_attrs[TrialAttr.RUN_DIR]) for t in trials]
    assert len(set(folders)) == 4 and {f.parent for f in folders} == {tmp_path / "outputs/multirun/default/shared"}
    for trial, folder in zip(trials, folders):  # the job that wrote the folder ran the trial's point
        ran = json.loads((folder / "summary.json").read_text())["params"]
        assert float(ran["optim.lr"]) == trial.params["optim.lr"]


def _wait_for_a_study(storage_url: str, timeout_s: float = 120) -> None:
    """Read-only (Optuna's RDBStorage would create the tables itself, racing the process that is creating them)."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(storage_url) as connection:
                if connection.execute("SELECT count(*) FROM studies").fetchone()[0]:
                    return
        except psycopg.Error:  # no tables yet
            pass
        time.sleep(1)
    raise AssertionError(f"no study in {storage_url} after {timeout_s} s")


def test_two_machines_on_one_postgresql_study_report_every_curve_from_the_database(tmp_path, postgres_url):
    """Two sweep processes with output folders of their own (two machines' disks); one folder is then lost."""
    args = [*SWEEP, f"hydra.sweeper.storage={postgres_url}", "hydra.sweeper.sampler.name=grid",
            "optim.lr=choice(1e-3,2e-3,3e-3,4e-3)", "train.eval_steps=4"]
    machines = [tmp_path / "a", tmp_path / "b"]
    for folder in machines:
        folder.mkdir()
    first = sweep_process(machines[0], *args)
    _wait_for_a_study(postgres_url)  # the first one creates the storage's tables (a 3 s sleep was once too short)
    second = sweep_process(machines[1], *args, stderr=subprocess.PIPE)
    assert first.wait(timeout=600) == 0
    assert second.wait(timeout=600) == 0, second.stderr.read().decode()[-3000:]
    shutil.rmtree(machines[1] / "outputs")

    sweep_dir, = sweep_dirs(machines[0])
    runs, study = load_runs(sweep_dir)
    assert len(runs) == 4 and {r.state for r in runs} == {"completed"}
    assert sorted(r.values["optim.lr"] for r in runs) == ["0.001", "0.002", "0.003", "0.004"]  # no point twice
    for run in runs:
        for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
            steps, values = run.series(key)
            assert steps and len(steps) == len(values), (run.name, key)
        assert run.summary.status == "completed" and run.best_eval_loss is not None
    assert results_of(runs, study).keys == ["optim.lr"]  # a run read from the study has every override too
    assert {t.user_attrs["host"] for t in study.trials} == {socket.gethostname()}
    assert best(study)["best"]["host"] == socket.gethostname()
    report_main([str(sweep_dir)])
    assert (sweep_dir / "report.html").is_file()


def test_a_long_curve_is_thinned_to_fit_one_attribute_keeping_its_ends():
    points = [[step, 1.0 / (step + 1)] for step in range(5000)]
    thinned = thin_curve(points, max_chars=20_000)
    assert len(json.dumps(thinned)) <= 20_000 and thinned[0] == points[0] and thinned[-1] == points[-1]
    assert thin_curve(points[:10]) == points[:10]


def test_two_objectives_give_a_pareto_front(tmp_path):
    result = run_cli(*SWEEP, "hydra.sweeper.metric=[test_accuracy,wall_time_s]",
                     "hydra.sweeper.direction=[maximize,minimize]", "hydra.sweeper.sampler.name=random",
                     "hydra.sweeper.n_trials=2", "lora.r=choice(2,4)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir, = sweep_dirs(tmp_path)
    front = json.loads((sweep_dir / "best.json").read_text())["pareto_front"]
    assert front and set(front[0]["values"]) == {"test_accuracy", "wall_time_s"}


def test_the_joblib_launcher_runs_a_batch_of_trials_at_once(tmp_path):
    result = run_cli(*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                     "hydra.sweeper.n_trials=2", "optim.lr=tag(log,interval(1e-4,1e-2))", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = load_study(tmp_path).trials
    assert first.state.name == second.state.name == "COMPLETE"
    assert second.datetime_start < first.datetime_complete  # both ran at the same time


def test_the_study_command_serves_optuna_dashboard_on_localhost(tmp_path):
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    server = subprocess.Popen([sys.executable, "-m", "ftharness.study", str(tmp_path / "s.db"), "--dashboard",
                               "--port", "8791"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                with urllib.request.urlopen("http://127.0.0.1:8791/api/studies", timeout=2) as response:
                    assert json.loads(response.read())["study_summaries"][0]["study_name"] == "s"
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail("optuna-dashboard did not answer on 127.0.0.1:8791")
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("setting,message", [
    ("hydra.sweeper.sampler.name=annealing", "hydra.sweeper.sampler.name='annealing': allowed: tpe"),
    ("hydra.sweeper.pruner.name=sometimes", "hydra.sweeper.pruner.name='sometimes': allowed: median"),
    ("hydra.sweeper.pruner.evidence=accuracy", "hydra.sweeper.pruner.evidence='accuracy': allowed: eval_loss, "
                                               "train_loss"),
    ("hydra.sweeper.pruner.warmup=-0.5", "hydra.sweeper.pruner.warmup=-0.5: allowed: a share of the trial's steps "
                                         "(below 1) or a number of steps (1 or more) with the pruners median, "),
])
def test_a_wrong_sampler_or_pruner_stops_the_sweep_with_one_line(tmp_path, setting, message):
    result = run_cli(*SWEEP, "hydra.sweeper.n_trials=1", "lora.r=choice(2,4)", setting, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message)  # the last line: no hint to set HYDRA_FULL_ERROR for a stack trace
    assert not list(tmp_path.glob("outputs/multirun/*/*/0/summary.json"))  # no trial ran
