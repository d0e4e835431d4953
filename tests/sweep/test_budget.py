"""A budget-true study (sweeps/budget.yaml): every trial on the target run's schedule, stopped at rungs of it."""

import optuna
import pytest
from optuna.trial import TrialState
from test_sweeper import load_study

from conftest import TINY, run_cli
from ftharness.contract import Status, TrialAttr

# 27 steps of 2 rows from 64 training rows: one epoch, so every step reports its batch's loss before the update
BUDGET = ["-m", *TINY, "eval.max_new_tokens=0", "sweep=budget", "train.max_steps=27", "train.per_device_batch_size=2",
          "data.train_size=64", "hydra.sweeper.n_trials=6"]
RUNGS = (1, 3, 9)  # 1/27, 1/9 and 1/3 of 27 steps


def _lr_shape(trial: optuna.trial.FrozenTrial) -> dict:
    """step -> the trial's learning rate over its peak: the schedule, whatever the trial's lr."""
    curve = dict(trial.user_attrs[TrialAttr.CURVE + "learning_rate"])
    return {step: lr / trial.params["optim.lr"] for step, lr in curve.items()}


@pytest.fixture(scope="module")
def budget_study(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("budget")
    result = run_cli(*BUDGET, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_study(cwd, "budget-study"), result.stdout


def test_trials_are_stopped_only_at_the_rungs_they_claim(budget_study):
    study, stdout = budget_study
    pruned = [t for t in study.trials if t.user_attrs[TrialAttr.STATUS] == Status.PRUNED]  # not the diverged
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and completed, [t.state.name for t in study.trials]
    for trial in pruned:
        step = trial.user_attrs[TrialAttr.STEPS]
        assert step in RUNGS and max(trial.intermediate_values) == step
        assert trial.user_attrs[TrialAttr.REASON].startswith(f"pruned at step {step} (train_loss ")
        assert "not among the best 1/3 of the" in trial.user_attrs[TrialAttr.REASON]
    assert all(t.user_attrs[TrialAttr.STEPS] == 27 for t in completed)  # the target run, trained to its end
    assert "new study budget-study" in stdout
    best = study.best_trial  # its adapter is the trained model: the end of the sweep names it
    assert f"adapter: {best.user_attrs[TrialAttr.WEIGHTS_DIR]} (trial {best.number}, 27 steps; from_best=" in stdout


def test_every_trial_follows_the_target_run_s_schedule_from_step_0(budget_study):
    study, _ = budget_study
    full = _lr_shape(next(t for t in study.trials if t.state == TrialState.COMPLETE))
    assert len(full) == 27
    for trial in study.trials:
        shape = _lr_shape(trial)
        assert shape == pytest.approx({step: full[step] for step in shape}, rel=1e-6)  # a prefix of the full run's
