"""The study's own SwanLab run: scatter charts of grad_norm and eval loss against lr, one series per rank, logged
once per finished trial; read back from the run's files (SwanLab 0.10's local board does not draw ECharts: they
show on the cloud board, SwanHubX/SwanLab#1173)."""

import json
from pathlib import Path

import optuna
from matplotlib import pyplot
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from ftharness.contract import TrialAttr
from ftharness.report.importances import own_study
from ftharness.ui.colours import Scale
from ftharness.ui.study_board import CHARTS, board_points, log_study_board

SPACE = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True), "lora.r": CategoricalDistribution([8, 16])}


def _trial(lr: float, rank: int, loss: float, **attrs) -> optuna.trial.FrozenTrial:
    summary = {"status": "completed", "final_grad_norm": lr * 100, "after": {"eval_loss": loss}}
    return create_trial(state=TrialState.COMPLETE, value=loss, params={"optim.lr": lr, "lora.r": rank},
                        distributions=SPACE, user_attrs={TrialAttr.SUMMARY: summary, **attrs})


def test_the_study_run_holds_a_scatter_per_number_coloured_by_rank(tmp_path):
    study = optuna.create_study()
    study.add_trials([_trial(1e-3, 8, 4.2), _trial(1e-2, 16, 4.1), _trial(3e-3, 16, 4.0),
                      _trial(3e-3, 16, 4.05, **{TrialAttr.CONFIRMS: 2, TrialAttr.SEED: 43})])
    own = own_study(study)
    assert [(p.trial, p.rank, p.grad_norm) for p in board_points(own)] == [(0, "8", 0.1), (1, "16", 1.0),
                                                                          (2, "16", 0.3)]  # no confirmation
    figure = tmp_path / "by_key.png"
    pyplot.figure(figsize=(2, 1)).savefig(figure)
    folder = Path(log_study_board(own, "my-study", "ftharness-my-study", str(tmp_path), "local", figure))
    assert folder.parent == tmp_path
    image, = (folder / "media" / str(len(CHARTS) + 1)).glob("*.png")  # the report's figure: a local board draws it
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    colours = Scale("lora.r", 8, 16).colour
    for index, chart in enumerate(CHARTS, start=1):
        steps = sorted((folder / "media" / str(index)).glob("*.json"))
        assert len(steps) == 3  # once per finished trial
        option = json.loads(steps[-1].read_text())
        assert option["xAxis"][0]["type"] == "log"
        series = {s["name"]: s for s in option["series"]}
        assert {name: s["itemStyle"]["color"] for name, s in series.items()} == {"r=8": colours(8),
                                                                                  "r=16": colours(16)}
        numbers = {"study/grad_norm_vs_lr": [[1e-2, 1.0], [3e-3, 0.3]], "study/eval_loss_vs_lr": [[1e-2, 4.1],
                                                                                                   [3e-3, 4.0]]}
        assert [[x, y] for x, y in series["r=16"]["data"]] == numbers[chart]
