"""The report of a study of several keys: the figure by key read back from its named results, headings that claim no
seeds a point does not have, Optuna's plots on the study's own trials, and every run's seed in the table. The study is
built in memory (trials with the summary and curves a job stores), so no trial trains."""

import re
from typing import Optional

import optuna
import pytest
from matplotlib import pyplot
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from optuna.visualization.matplotlib import plot_intermediate_values, plot_optimization_history

from ftharness.contract import Status, StudyAttr, TrialAttr
from ftharness.report.by_key import by_key_info
from ftharness.report.figures import name_trials, optuna_figures
from ftharness.report.importances import IMPORTANCE_FLOOR, STUDY_NUMBERS, Importances, key_importances, own_study
from ftharness.report.results import results_of
from ftharness.report.runs import study_runs
from ftharness.report.sweep_report import build
from ftharness.sweep.optuna_objects import experimental

KEYS = ["optim.lr", "lora.r", "lora.target_modules"]
SPACE = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True), "lora.r": CategoricalDistribution([8, 16]),
         "lora.target_modules": CategoricalDistribution(["all-linear", "attention", "q_v"])}
STEPS, RUNG = 4, 2  # completed trials train 4 steps; pruned ones stop at the first rung, step 2


def _trial(params: dict, status: Status, steps: int, loss: Optional[float], **attrs) -> optuna.trial.FrozenTrial:
    """A finished trial as the sweeper stores it: status, summary and curves (grad_norm grows with lr); `overrides`
    adds to the summary's params (a confirmation's seed)."""
    grad_norms = [[step, params["optim.lr"] * 100 * step] for step in range(1, steps + 1)]
    evals = [[0, 5.0]] + ([[steps, loss]] if loss is not None else [])
    summary = {"status": status, "params": {k: str(v) for k, v in params.items()} | attrs.pop("overrides", {}),
               "objective": {"metric": "eval_loss", "direction": "minimize", "value": loss}, "steps": steps}
    state = {Status.COMPLETED: TrialState.COMPLETE, Status.REPEAT: TrialState.COMPLETE,
             Status.PRUNED: TrialState.PRUNED}.get(status, TrialState.FAIL)
    return create_trial(state=state, value=loss if state == TrialState.COMPLETE else None, params=params,
                        distributions=SPACE, user_attrs={TrialAttr.STATUS: status, TrialAttr.SUMMARY: summary,
                                                         f"{TrialAttr.CURVE}grad_norm": grad_norms,
                                                         f"{TrialAttr.CURVE}eval_loss": evals, **attrs})


def three_key_study(completed: int = 10) -> optuna.Study:
    """`completed` completed trials, 3 pruned at the rung, 1 diverged at step 1, 1 repeat of trial 0 and trial 0
    confirmed with seeds 43 and 44; the study's settings hold seed 42."""
    study = optuna.create_study(direction="minimize")
    study.set_user_attr(StudyAttr.SETTINGS, {"fixed": {"seed": 42}, "searched": KEYS})
    modules = SPACE["lora.target_modules"].choices

    def point(i: int) -> dict:
        return {"optim.lr": 1e-4 * 1.5 ** i, "lora.r": (8, 16)[i % 2], "lora.target_modules": modules[i % 3]}

    trials = [_trial(point(i), Status.COMPLETED, STEPS, 4.0 + i / 100) for i in range(completed)]
    trials += [_trial(point(i), Status.PRUNED, RUNG, None) for i in range(completed, completed + 3)]
    trials.append(_trial(point(completed + 3), Status.DIVERGED, 1, None))
    trials.append(_trial(point(0), Status.REPEAT, STEPS, 4.0, **{TrialAttr.REPEATS: 0}))
    trials += [_trial(point(0), Status.COMPLETED, STEPS, 4.0 + seed / 1000, overrides={"seed": str(seed)},
                      **{TrialAttr.CONFIRMS: 0, TrialAttr.SEED: seed}) for seed in (43, 44)]
    study.add_trials(trials)
    return study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return three_key_study()


def test_the_figure_by_key_reads_every_trial_at_the_first_rung_and_the_completed_ones_at_the_end(study):
    results = results_of(study_runs(study), study)
    importances = key_importances(own_study(study), results.keys)
    assert sorted(results.keys) == sorted(KEYS) and sorted(importances.keys) == sorted(KEYS)
    assert importances.points == 10 and "by importance (PED-ANOVA over 10 completed trials)" == importances.order
    info = by_key_info(results.runs, importances)
    assert info.rung == RUNG and info.best == "trial 0" and [row.key for row in info.rows] == importances.keys
    for row in info.rows:
        others = [k for k in importances.keys if k != row.key]
        assert row.colour.key == others[0] and row.marker_key == others[1]  # the next keys colour and mark
        at_rung, grad_norm, eval_loss = row.panels
        assert at_rung.measure == f"grad_norm at step {RUNG}" and len(at_rung.points) == 13  # 10 completed, 3 pruned
        assert at_rung.left_out == f"1 diverged (ended before step {RUNG})"
        assert len(grad_norm.points) == len(eval_loss.points) == 10
        assert eval_loss.left_out == "3 pruned, 1 diverged (stopped early)"
        runs = {run.name: run for run in results.runs}
        for point in at_rung.points:  # each point coloured by its trial's value of the colouring key
            assert point.colour == row.colour.colour(runs[point.trial].values[row.colour.key])
            assert point.y == pytest.approx(float(runs[point.trial].values["optim.lr"]) * 100 * RUNG)
        assert not at_rung.confirmed
        confirmed, = eval_loss.confirmed  # trial 0 with seeds 42, 43 and 44
        assert confirmed.seeds == 3 and (confirmed.y, confirmed.low, confirmed.high) == (4.0, 4.0, 4.044)
        assert eval_loss.best.trial == "trial 0"


def test_no_heading_claims_seeds_a_point_does_not_have(study, tmp_path):
    report = build(tmp_path, results_of(study_runs(study), study))
    captions = list(report.figures)
    assert not any(re.search(r"mean of \d+ seeds", caption) for caption in captions)
    curves, by_key = captions[:2]
    assert "one line per point: the mean of its seeds (3 seeds for 1 point, 1 seed for 13 points)" in curves
    assert by_key.startswith("grad_norm and eval loss by key, rows by importance (PED-ANOVA over 10 completed")
    assert "one point per trial of the study (one seed)" in by_key and f"at step {RUNG} (the first rung)" in by_key
    assert (tmp_path / "by_key.png").stat().st_size > 0 and not (tmp_path / "by_value.png").exists()
    assert "Optuna: history (the study's 14 trials; confirmations apart)" in captions
    assert "Optuna: importances (10 completed trials; confirmations apart)" in captions


def test_optunas_plots_hold_the_study_own_trials_only(study):
    own = own_study(study)
    assert len(own.trials) == 14  # 10 completed, 3 pruned, 1 diverged: no repeat, no confirmation
    assert not any(TrialAttr.CONFIRMS in t.user_attrs or t.user_attrs[TrialAttr.STATUS] == Status.REPEAT
                   for t in own.trials)


def test_importances_below_the_floor_are_neither_drawn_nor_used(tmp_path):
    study = three_key_study(completed=IMPORTANCE_FLOOR - 1)
    report = build(tmp_path, results_of(study_runs(study), study))
    assert not any(caption.startswith("Optuna: importances") for caption in report.figures)
    assert (f"Optuna importances not drawn: {IMPORTANCE_FLOOR - 1} completed trials of the study; importances "
            f"drawn from {IMPORTANCE_FLOOR} up") in " ".join(report.notes)
    assert any("rows in search order (importances need 10 completed trials" in c for c in report.figures)


def test_every_run_has_its_seed_in_the_table(study):
    rows = results_of(study_runs(study), study).rows
    seeds = {row["run"]: row["seed"] for row in rows}  # trials 15 and 16 confirm trial 0
    assert (seeds.pop("trial 15"), seeds.pop("trial 16")) == ("43", "44") and set(seeds.values()) == {"42"}


def test_another_apps_reported_values_are_drawn_by_optuna_with_the_trials_numbers_of_the_table(tmp_path):
    """Without ftharness's curves, Optuna's plot of the values trials reported per step. It and the history name the
    trials as the study does, not as the copy of its own trials renumbers them (the repeat, trial 1, is not in it)."""
    distributions = {"x": FloatDistribution(0, 1)}
    study = optuna.create_study()
    study.add_trials([create_trial(state=TrialState.COMPLETE, value=v, params={"x": v}, distributions=distributions,
                                   intermediate_values={0: 2 * v, 1: v}, user_attrs={TrialAttr.STATUS: status})
                      for v, status in [(0.5, Status.COMPLETED), (0.5, Status.REPEAT), (0.2, Status.COMPLETED)]])
    own = own_study(study)
    assert own.user_attrs[STUDY_NUMBERS] == [0, 2]
    figures = optuna_figures(own, tmp_path, [], Importances(["x"], 2), curves=False)
    assert "Optuna: intermediate values (the study's 2 trials; confirmations apart)" in figures
    assert not any("intermediate" in caption for caption in optuna_figures(own, tmp_path, [], Importances(["x"], 2)))
    with experimental():
        reported, history = plot_intermediate_values(own).figure, plot_optimization_history(own).figure
    for figure in (reported, history):
        name_trials(figure, own.user_attrs[STUDY_NUMBERS])
        figure.canvas.draw()
    assert [text.get_text() for text in reported.axes[0].get_legend().get_texts()] == ["trial 0", "trial 2"]
    assert [text.get_text() for text in history.axes[0].get_xticklabels() if text.get_text()] == ["0", "2"]
    pyplot.close("all")
