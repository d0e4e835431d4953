"""Points over the memory budget told before launch (`wont_fit`), and out-of-memory trials, as Optuna constraints."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest
from omegaconf import OmegaConf

from conftest import REPO, TINY, finished_job, run_cli
from ftharness.contract import Status, TrialSummary
from ftharness.sweep.asking import counted
from ftharness.sweep.feasibility import GB, check_budget_setting, memory_budget
from ftharness.sweep.feasibility import main as feasibility_main
from ftharness.sweep.loop import StudySweep
from ftharness.sweep.optuna_objects import SweepConfigError
from ftharness.sweep.telling import job_outcome, tell_outcome
from hydra_plugins.ftharness_sweeper.config import FtharnessSweeperConf

# batch 64 x 2048 tokens: a 2.7 GB estimate on the tiny model (activations and logits); batch 1: ~0.5 GB
OVER_AND_UNDER = ["-m", *TINY, "eval.max_new_tokens=0", "hydra/sweeper=ftharness", "hydra.sweeper.sampler.name=grid",
                  "train.per_device_batch_size=choice(64,1)", "data.max_length=2048"]


def _study(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/outputs/studies/{name}.db")


def test_a_point_over_the_memory_budget_is_told_wont_fit_before_launch_and_the_sampler_sees_a_constraint(tmp_path):
    result = run_cli(*OVER_AND_UNDER, "hydra.sweeper.memory_budget_gb=1.5", "hydra.sweeper.max_failure_rate=0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.params["train.per_device_batch_size"]: t for t in _study(tmp_path, "default").trials}
    over, under = trials[64], trials[1]
    assert over.state.name == "PRUNED" and over.user_attrs["status"] == "wont_fit"
    assert "run_dir" not in over.user_attrs and not over.intermediate_values
    assert "over the budget of 1.50 GB (hydra.sweeper.memory_budget_gb=1.5)" in over.user_attrs["reason"]
    assert over.constraints["wont_fit"] > 0  # estimate / budget - 1: how far over
    assert over.constraints["wont_fit"] == pytest.approx(float(over.user_attrs["reason"].split()[2]) / 1.5 - 1,
                                                         abs=0.01)
    assert under.state.name == "COMPLETE" and under.constraints == {}
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    assert [p.name for p in sweep_dir.iterdir() if p.is_dir()] == ["0"]  # one job: the point that fits
    rows = {r["train.per_device_batch_size"]: r for r in csv.DictReader((sweep_dir / "results.csv").open())}
    assert rows["64"]["state"] == "wont_fit" and rows["64"]["reason"] == over.user_attrs["reason"]
    assert rows["1"]["state"] == "completed"
    assert "Results (2 runs, 1 not run: over the memory budget (wont_fit))" in result.stdout
    assert f"trial {over.number} ({over.number + 1}/2)  wont_fit  per_device_batch_size=64: memory" in result.stdout
    assert "1 not run: over the memory budget" in (sweep_dir / "report.html").read_text()

    off = run_cli(*OVER_AND_UNDER, "hydra.sweeper.memory_budget_gb=null", "name=off", cwd=tmp_path)
    assert off.returncode == 0, off.stderr[-3000:]
    assert [t.state.name for t in _study(tmp_path, "off").trials] == ["COMPLETE", "COMPLETE"]


def _sweeper(**changes) -> StudySweep:
    conf = OmegaConf.merge(OmegaConf.structured(FtharnessSweeperConf), {"study_name": "s", "metric": "eval_loss",
                                                                        "direction": "minimize", **changes})
    return StudySweep.from_config(**{k: v for k, v in conf.items() if k != "_target_"})


def test_an_out_of_memory_trial_is_told_infeasible_and_counts_as_no_failure(tmp_path):
    TrialSummary(Status.OOM, stop_reason="out of memory at micro-batch 8 x 2048 tokens").write(tmp_path)
    job = finished_job(tmp_path)
    study = optuna.create_study()
    tell_outcome(study, study.ask(), job_outcome(job, ["eval_loss"]))
    told, = study.trials
    assert told.state.name == "PRUNED" and told.constraints == {"oom": 1.0}
    assert told.user_attrs["reason"].startswith("out of memory") and counted(study) == 1


@pytest.mark.parametrize("value", ["lots", 0, -2, True])
def test_a_bad_memory_budget_is_refused_naming_the_key_and_what_is_allowed(value):
    with pytest.raises(SweepConfigError, match=r"hydra.sweeper.memory_budget_gb=.*allowed: auto .* or null"):
        check_budget_setting(value)
    with pytest.raises(SweepConfigError, match="memory_budget_gb"):
        _sweeper(memory_budget_gb=value)


def test_the_budget_is_the_number_given_or_the_device_s_memory_shared_by_parallel_trials():
    assert memory_budget(None, "cpu", 1) is None
    given = memory_budget(24, "cpu", 4)
    assert given.bytes == 24 * GB and given.source == "hydra.sweeper.memory_budget_gb=24"
    shared = memory_budget("auto", "cpu", 2)
    assert shared.bytes == pytest.approx(psutil.virtual_memory().available / 2, rel=0.05)
    assert shared.source == "the RAM available at the sweep's start, shared by 2 parallel trials"
    assert json.dumps(_sweeper().budget.memory_budget_gb) == '"auto"'  # the default: on


def test_the_plan_of_a_7b_batch_size_sweep_needs_its_config_alone_and_says_which_points_fit(tmp_path, capsys):
    shape = tmp_path / "deepseek-7b"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "random_model.py"), "deepseek-llm-7b", str(shape),
                    "--config-only"], check=True)
    assert [p.name for p in shape.iterdir()] == ["config.json"]
    feasibility_main(["--budget-gb", "24", "model=deepseek-llm-7b-chat", f"model.name_or_path={shape}",
                      "train.device=cuda", "train.precision=bf16", "train.per_device_batch_size=1,4",
                      "data.max_length=2048"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:] if line]
    assert [(row[0], row[2]) for row in rows] == [("| train.per_device_batch_size=1", "fits"),
                                                  ("| train.per_device_batch_size=4", "wont_fit")]
    assert "over the budget of 24.00 GB (--budget-gb 24.0); would fit with train.per_device_batch_size=2" in rows[1][3]


def test_a_tpe_study_asks_once_more_for_each_point_over_the_budget_up_to_n_trials_more(tmp_path):
    args = ["-m", *TINY, "eval.max_new_tokens=0", "hydra/sweeper=ftharness", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.seed=0", "train.per_device_batch_size=choice(1,64)",
            "optim.lr=tag(log,interval(1e-4,1e-2))", "data.max_length=2048", "hydra.sweeper.memory_budget_gb=1.5"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = [t.user_attrs["status"] for t in _study(tmp_path, "default").trials]
    wont_fit = statuses.count("wont_fit")
    assert wont_fit >= 1 and len(statuses) == 3 + min(wont_fit, 3)  # one more ask each, at most n_trials more
    assert statuses.count("completed") == len(statuses) - wont_fit  # n_trials trained, unless the extra ran out
    assert f"Results ({len(statuses)} runs, {statuses.count('wont_fit')} not run" in result.stdout
    rerun = run_cli(*args, cwd=tmp_path)  # done: the extra asks are not taken for missing trials
    assert rerun.returncode == 0 and len(_study(tmp_path, "default").trials) == len(statuses)
