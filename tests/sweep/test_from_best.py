"""`python -m ftharness from_best=...`: a study's best point as one run, from a sweep folder, best.json or storage."""

import json
import os
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_sweeper import SWEEP, load_study, sweep_dirs

from conftest import run_cli
from ftharness.contract import FROM_BEST_ENV, TrialAttr
from ftharness.sweep.from_best import FromBestError, from_best_arguments

STUDY = ["optim.lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=3",
         "hydra.sweeper.pruner.name=none"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("study")
    result = run_cli(*SWEEP, *STUDY, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = sweep_dirs(cwd)[0]
    assert f"python -m ftharness from_best={sweep_dir.relative_to(cwd)} " in result.stdout  # said at its end
    return cwd, sweep_dir


def test_from_a_sweep_folder_the_best_point_trains_with_the_command_line_on_top(study_dir, tmp_path):
    cwd, sweep_dir = study_dir
    best = load_study(cwd).best_trial
    result = run_cli(f"from_best={sweep_dir}", "train.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["optim"]["lr"] == pytest.approx(best.params["optim.lr"])
    assert config["train"]["max_steps"] == 2 and config["model"]["name_or_path"] == "embedded:tiny-llama"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["run_name"] == "best of default"
    assert summary["from_best"]["trial"] == best.number and summary["from_best"]["source"] == str(sweep_dir)


@pytest.mark.parametrize("source", ["best.json", "sqlite"])
def test_best_json_and_a_storage_url_give_the_best_point_s_overrides(study_dir, source):
    cwd, sweep_dir = study_dir
    best = load_study(cwd).best_trial
    target = str(sweep_dir / "best.json") if source == "best.json" else f"sqlite:///{cwd}/outputs/studies/default.db"
    argv, handed_over = from_best_arguments([f"from_best={target}", "train.max_steps=2"])
    assert handed_over is None
    assert f"optim.lr={best.params['optim.lr']}" in argv and argv[-1] == "train.max_steps=2"
    assert "model=tiny" in argv  # the study's own settings, from the best trial's job
    assert json.loads(os.environ[FROM_BEST_ENV])["trial"] == best.number


def test_alone_it_hands_the_best_trial_s_adapter_over_which_evaluates_as_a_fresh_run_of_the_point(study_dir, tmp_path):
    cwd, sweep_dir = study_dir
    best = load_study(cwd).best_trial
    weights = best.user_attrs[TrialAttr.WEIGHTS_DIR]
    handed = run_cli(f"from_best={sweep_dir}", cwd=cwd)
    assert handed.returncode == 0, handed.stderr[-3000:]
    assert handed.stdout.strip() == (f"trial {best.number} of default trained this point to the end of its run: its "
                                     f"adapter is {weights}. Nothing trained: add overrides (e.g. train.max_steps=-1 "
                                     "train.epochs=3) or from_best.retrain=true to train it again")
    fresh = run_cli(f"from_best={sweep_dir}", "from_best.retrain=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=cwd)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["eval_loss"] == pytest.approx(best.value, rel=1e-5)  # the same run, the same result
    handed_weights, fresh_weights = (load_file(Path(d) / "adapter_model.safetensors")
                                     for d in (weights, summary["weights_dir"]))
    assert handed_weights.keys() == fresh_weights.keys()
    assert all(torch.allclose(handed_weights[k], fresh_weights[k], atol=1e-6) for k in handed_weights)
    refused = run_cli(f"from_best={sweep_dir}", "from_best.retrain=maybe", cwd=cwd)
    assert refused.returncode == 2 and "from_best.retrain=maybe: allowed: true or false" in refused.stderr


def test_a_missing_or_empty_study_is_one_line(tmp_path):
    optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path}/empty.db")
    (tmp_path / "notes.txt").write_text("not a storage\n")
    for source, said in ((tmp_path / "nowhere.json", "no such file"),
                         (f"sqlite:///{tmp_path}/empty.db", "has no completed trial yet"),
                         (tmp_path, "no best.json or study.json"),
                         (tmp_path / "nowhere.db", "nowhere.db: no such file"),  # was: an empty .db made there
                         (tmp_path / "notes.txt", "notes.txt: not read as an Optuna storage (file is not a database)")):
        result = run_cli(f"from_best={source}", cwd=tmp_path)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1  # was SQLAlchemy's message on 3 lines for notes.txt
    assert not (tmp_path / "nowhere.db").exists()


def test_a_pareto_front_asks_which_point(tmp_path):
    front = [{"number": n, "params": {"optim.lr": lr}, "values": {"eval_loss": loss, "wall_time_s": s}}
             for n, lr, loss, s in ((2, 1e-3, 0.03, 90.0), (5, 3e-4, 0.05, 40.0))]
    (tmp_path / "best.json").write_text(json.dumps({"study": "pareto", "pareto_front": front}))
    with pytest.raises(FromBestError, match=r"from_best.index=N: 0: trial 2 .*; 1: trial 5"):
        from_best_arguments([f"from_best={tmp_path / 'best.json'}"])
    argv, _ = from_best_arguments([f"from_best={tmp_path / 'best.json'}", "from_best.index=1", "seed=7"])
    assert argv == ["optim.lr=0.0003", "seed=7"]  # the folder of trial 5 is not here: its parameters alone
