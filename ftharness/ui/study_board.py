"""The study on the SwanLab board: one run per study, named after it, with grad_norm and eval loss against lr.

SwanLab draws a trial's curves against its steps; it has no chart of one number per run against a
hyperparameter. So a study gets a run of its own, in the project its trials log into, holding ECharts scatter
charts of each completed trial's final grad_norm and eval loss against its lr, one series (and colour, on the
report's scale: ftharness/ui/colours.py) per LoRA rank. The charts are logged once per finished trial, at the
step of that trial's count, so the board's step slider replays the study as its trials finished; only the
study's own trials count (confirmations and repeats apart, ftharness/report/importances.py `own_study`). It is
written when the sweep ends (ftharness/report/end_of_sweep.py): a local run cannot be resumed (SwanLab resumes
online runs only), so a run opened per finished batch would be one more run each time.

SwanLab 0.10's local board (`swanlab watch`) draws ECharts as "Empty Chart" (SwanHubX/SwanLab#1173: the cloud
board draws them); locally the charts are in the run's files (media/<n>/*.json, one per step) until it is synced.
So the run also holds the report's figure by key (report.html's scatter of grad_norm and eval loss against every
searched key) as an image, `study/by_key`, which every board draws.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import optuna
from optuna.trial import TrialState

from ftharness.contract import TrialAttr, TrialSummary
from ftharness.lazy import swanlab
from ftharness.ui.colours import scale_of
from ftharness.ui.formatting import format_value
from ftharness.ui.tracking import SWANLAB_MODES

LR_KEY, RANK_KEY = "optim.lr", "lora.r"
CHARTS = {"study/grad_norm_vs_lr": "final grad_norm", "study/eval_loss_vs_lr": "eval loss"}
FIGURE_CHART = "study/by_key"  # the report's figure, an image: the charts a local board draws


@dataclass
class BoardPoint:
    """One completed trial of the study, as the board's scatter charts show it."""

    trial: int
    lr: float
    rank: str
    grad_norm: Optional[float]
    eval_loss: Optional[float]

    def value(self, chart: str) -> Optional[float]:
        return self.grad_norm if chart == "study/grad_norm_vs_lr" else self.eval_loss


def board_points(own: optuna.Study) -> List[BoardPoint]:
    """The study's completed trials with an lr, in the order they finished."""
    done = sorted((t for t in own.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                   and LR_KEY in t.params), key=lambda t: t.datetime_complete or t.datetime_start)
    points = []
    for trial in done:
        summary = TrialSummary.from_dict(trial.user_attrs.get(TrialAttr.SUMMARY) or {})
        points.append(BoardPoint(trial.number, float(trial.params[LR_KEY]), str(trial.params.get(RANK_KEY, "")),
                                 summary.final_grad_norm, summary.metric("eval_loss")))
    return points


def scatter(chart: str, points: List[BoardPoint], colours: Dict[str, str]):
    """An ECharts scatter of `chart`'s number against lr (log axis), one series per rank."""
    echarts = swanlab().echarts
    options = echarts.options
    figure = echarts.Scatter()
    figure.add_xaxis([])
    for rank, colour in colours.items():
        pairs = [[p.lr, p.value(chart)] for p in points if p.rank == rank and _finite(p.value(chart))]
        figure.add_yaxis(f"r={format_value(rank)}" if rank else "trials", pairs, symbol_size=8,
                         itemstyle_opts=options.ItemStyleOpts(color=colour),
                         label_opts=options.LabelOpts(is_show=False))
    figure.set_global_opts(title_opts=options.TitleOpts(title=f"{CHARTS[chart]} vs lr"),
                           xaxis_opts=options.AxisOpts(type_="log", name="lr"),
                           yaxis_opts=options.AxisOpts(type_="value", name=CHARTS[chart], is_scale=True),
                           legend_opts=options.LegendOpts(is_show=True))
    return figure


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def log_study_board(own: optuna.Study, name: str, project: str, log_dir: str, mode: str,
                    figure: Optional[Path] = None) -> Optional[str]:
    """Log the study's run (`name`, in `project`): its scatter charts once per completed trial, at the step of
    the trial count, and at the last step the report's `figure` (a PNG) when given. `own` holds the study's own
    trials; returns the run's folder (None when tracking is disabled or nothing is charted: no completed trial, or
    a study that does not search lr)."""
    points = board_points(own)
    if mode == "disabled" or not points:
        return None
    ranks = list(dict.fromkeys(sorted((p.rank for p in points), key=_rank_order)))
    scale = scale_of(RANK_KEY, ranks)
    colours = {rank: scale.colour(rank) if rank else "#1f77b4" for rank in ranks}
    board = swanlab()
    run = board.init(project=project, name=name, mode=SWANLAB_MODES[mode], log_dir=log_dir, group=name,
                     config={"study": name, "trials": len(points)}, reinit=True)
    for step in range(1, len(points) + 1):
        board.log({chart: scatter(chart, points[:step], colours) for chart in CHARTS}, step=step)
    if figure is not None:
        board.log({FIGURE_CHART: board.Image(str(figure), caption="report.html's figure by key")}, step=len(points))
    folder = str(run.dir) if getattr(run, "dir", None) else None
    board.finish()
    return folder


def _rank_order(rank: str) -> float:
    try:
        return float(rank)
    except ValueError:
        return math.inf
