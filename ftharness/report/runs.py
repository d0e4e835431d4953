"""The runs of a sweep as the report reads them: what each trial wrote (summary.json, metrics.jsonl), found
through the Optuna study when the sweep ran one (so a resumed study's earlier trials count too), else
through the job folders of a Hydra multirun. Tracking may have been off: nothing here reads SwanLab's files.
A trial whose folder is not on this machine (a study shared by several) is read from the study itself: the
summary the sweeper stored and the curves its job stored (ftharness/sweep/pruning.py `StudyRecorder`).
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Sequence, Tuple

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from ftharness.contract import (
    METRICS_FILE,
    SEED_KEY,
    STUDY_FILE,
    SUMMARY_FILE,
    TRAIN_CURVES,
    Status,
    StudyAttr,
    TrialAttr,
    TrialSummary,
)
from ftharness.sweep.optuna_objects import StudyNotFound, open_existing_study, retried_number
from ftharness.sweep.telling import study_metric_names
from ftharness.ui.formatting import number_of

NOT_RUN = (Status.REPEAT, Status.WONT_FIT)  # study trials told without a job: no curves, only their point
SPIKE_FACTOR = 3.0  # a grad_norm spike: a logged value above this many times the run's median


@dataclass
class Run:
    name: str  # the job folder's name, or "trial N"
    values: Dict[str, str]  # the overrides that made this run (swept and fixed)
    state: Status  # completed | pruned | diverged | oom | failed | interrupted | running | waiting
    reason: str = ""  # why it stopped early or failed
    summary: TrialSummary = field(default_factory=TrialSummary)  # an empty one when the run wrote none
    train: List[dict] = field(default_factory=list)  # metrics.jsonl train records, in step order
    evals: List[dict] = field(default_factory=list)  # metrics.jsonl eval records (step 0: before training)
    label: str = ""  # its value(s) of the swept key(s), set by `label_runs` (ftharness/report/results.py)
    number: float = math.nan  # the swept value as a number, when it is one
    seed: str = ""  # the seed it trained with: its override, else its config's (a study's own trials)
    confirms: Optional[int] = None  # a confirmation run: the number of the study trial whose point it runs again
    told: Dict[str, float] = field(default_factory=dict)  # a study's value(s) by metric name, when no summary has them

    def __post_init__(self):
        self.seed = self.seed or self.values.get(SEED_KEY, "")

    def metric(self, name: str) -> Optional[float]:
        """A metric by its objective name: from the run's summary, else as the study was told it (the job of
        another Hydra app writes no summary.json: its objective is what it returned)."""
        value = self.summary.metric(name)
        return self.told.get(name) if value is None else value

    def series(self, key: str) -> Tuple[List[int], List[float]]:
        records = self.evals if key == "eval_loss" else self.train
        name = "loss" if key == "eval_loss" else key
        points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
        return [s for s, _ in points], [v for _, v in points]

    @property
    def losses(self) -> List[float]:
        return self.series("loss")[1]

    @property
    def grad_norms(self) -> List[float]:
        return [g for g in self.series("grad_norm")[1] if math.isfinite(g)]

    @property
    def median_grad_norm(self) -> Optional[float]:
        return median(self.grad_norms) if self.grad_norms else None

    @property
    def grad_norm_spikes(self) -> int:
        center = self.median_grad_norm
        return sum(g > SPIKE_FACTOR * center for g in self.grad_norms) if center else 0

    @property
    def best_eval_loss(self) -> Optional[float]:
        trained = [e["loss"] for e in self.evals if e["step"] > 0 and math.isfinite(e["loss"])]
        return min(trained) if trained else None

    @property
    def loss_jitter(self) -> Optional[float]:
        """Mean |change| of the train loss from one logged step to the next over the second half of training:
        how noisy the curve is once the first fast descent is over."""
        tail = self.losses[len(self.losses) // 2:]
        changes = [abs(b - a) for a, b in zip(tail, tail[1:])]
        return sum(changes) / len(changes) if changes else None


def _read_metrics(run_dir: Path) -> Tuple[List[dict], List[dict]]:
    path = run_dir / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def _config_seed(run_dir: Path) -> str:
    """The seed in the job's composed config (Hydra's `.hydra/config.yaml`), "" when it has none."""
    path = run_dir / ".hydra" / "config.yaml"
    seed = OmegaConf.select(OmegaConf.load(path), SEED_KEY) if path.is_file() else None
    return "" if seed is None else str(seed)


def read_run(run_dir: Path, name: str, state: Status = Status.FAILED, reason: str = "",
             values: Optional[Dict[str, str]] = None) -> Run:
    """A run from its folder; `state` / `reason` / `values` stand in when it wrote no summary.json."""
    run = _run(name, TrialSummary.read(run_dir), state, reason, values, *_read_metrics(run_dir))
    run.seed = run.seed or _config_seed(run_dir)
    return run


def _run(name: str, summary: Optional[TrialSummary], state: Status, reason: str, values: Optional[Dict[str, str]],
         train: List[dict], evals: List[dict]) -> Run:
    """A run as its summary says (state, reason, every override); `state` / `reason` / `values` without one."""
    if summary is None:
        return Run(name, dict(values or {}), state, reason, TrialSummary(), train, evals)
    return Run(name, dict(summary.params), summary.status, summary.reason, summary, train, evals)


def stored_run(trial: optuna.trial.FrozenTrial, name: str, state: Status, reason: str,
               values: Dict[str, str]) -> Run:
    """A run from what its trial holds in the study: the summary and the curves as train / eval records."""
    curves = {key.removeprefix(TrialAttr.CURVE): points for key, points in trial.user_attrs.items()
              if key.startswith(TrialAttr.CURVE)}
    train: Dict[int, dict] = {}
    for key in TRAIN_CURVES:
        for step, value in curves.get(key, []):
            train.setdefault(step, {"kind": "train", "step": step})[key] = value
    evals = [{"kind": "eval", "step": step, "loss": value} for step, value in curves.get("eval_loss", [])]
    stored = trial.user_attrs.get(TrialAttr.SUMMARY)
    return _run(name, TrialSummary.from_dict(stored) if stored else None, state, reason, values,
                [train[step] for step in sorted(train)], evals)


def _study_seed(study: optuna.Study) -> str:
    """The seed every trial of the study shares (its stored settings), "" for a study made before it stored them."""
    settings = study.user_attrs.get(StudyAttr.SETTINGS) or {}
    seed = settings.get("fixed", {}).get(SEED_KEY)
    return "" if seed is None else str(seed)


def study_runs(study: optuna.Study) -> List[Run]:
    """A run per trial of `study`, read from the folder its job wrote (its summary.json says what happened:
    diverged or interrupted, where Optuna knows FAIL only), or from the study when that folder is not here; each
    with its seed (the study's own for its trials) and, for a confirmation, the trial it confirms."""
    trials = _reported_trials(study)
    retries = {retried_number(t): t.number for t in study.get_trials(deepcopy=False) if retried_number(t) is not None}
    swept = StudyAttr.METRICS in study.user_attrs  # run by the sweeper: a failure without a reason is a death
    runs = [_study_run(trial, swept, retries.get(trial.number)) for trial in trials]
    seed = _study_seed(study)
    names = study_metric_names(study)
    for run, trial in zip(runs, trials):
        marked = trial.user_attrs.get(TrialAttr.SEED)  # a confirmation's: one stopped before its job has no folder
        run.seed = run.seed or ("" if marked is None else str(marked)) or seed
        run.confirms = trial.user_attrs.get(TrialAttr.CONFIRMS)
        if run.summary.status is None:  # another app's job: the study holds its objective
            run.told = dict(zip(names, trial.values or []))
    return runs


def _reported_trials(study: optuna.Study) -> List[optuna.trial.FrozenTrial]:
    """The trials that are runs: apart, those asked in a race and never run, and a FAIL whose job a copy told (its
    process died after the job ended, ftharness/sweep/heartbeats.py)."""
    trials = study.get_trials(deepcopy=False)
    told_later = {t.user_attrs.get(TrialAttr.RUN_DIR) for t in trials if t.state.is_finished()
                  and t.state != TrialState.FAIL and t.system_attrs.get("failed_trial") is not None}
    return [t for t in trials if t.user_attrs.get(TrialAttr.STATUS) != Status.SURPLUS
            and not (t.state == TrialState.FAIL and t.user_attrs.get(TrialAttr.RUN_DIR) in told_later)]


def _study_run(trial: optuna.trial.FrozenTrial, swept: bool, retried_as: Optional[int]) -> Run:
    """The run of one trial: from its job folder when it is here, else from what the trial stored. In a study the
    sweeper ran (`swept`), a failed trial without a reason died (`_died`)."""
    name, values = f"trial {trial.number}", {k: str(v) for k, v in trial.params.items()}
    if not trial.state.is_finished():  # a retried trial still carries the attributes of the one it retries
        return Run(name, values, Status(trial.state.name.lower()))  # running | waiting
    run_dir = trial.user_attrs.get(TrialAttr.RUN_DIR)
    died = swept and trial.state == TrialState.FAIL
    reason = trial.user_attrs.get(TrialAttr.REASON) or (_died(retried_as) if died else "")
    state = Status(trial.user_attrs.get(TrialAttr.STATUS) or OPTUNA_STATES.get(trial.state, Status.COMPLETED))
    if run_dir and Path(run_dir).is_dir():
        return read_run(Path(run_dir), name, state, reason, values)
    return stored_run(trial, name, state, reason, values)


def _died(retried_as: Optional[int]) -> str:
    """The reason of a trial failed without one: only the heartbeat check fails so (the sweeper tells every failure
    with its reason), when the process that ran the trial died; Optuna's storage then takes no more attributes."""
    retry = f"; retried as trial {retried_as}" if retried_as is not None else ""
    return f"its sweep process died (no heartbeat){retry}"


def trained(runs: Sequence[Run]) -> List[Run]:
    """The runs that had a job: a repeat or a point over the memory budget has no curves (and only its point)."""
    return [run for run in runs if run.state not in NOT_RUN]


def not_run_note(runs: List[Run]) -> str:
    """`, 3 not run: over the memory budget (wont_fit)` when a study told points so before launch, and `, 1 repeat
    of a trained point (not trained again)` when it told repeats; else ``."""
    wont_fit = sum(run.state == Status.WONT_FIT for run in runs)
    repeats = sum(run.state == Status.REPEAT for run in runs)
    return ((f", {wont_fit} not run: over the memory budget (wont_fit)" if wont_fit else "")
            + (f", {number_of(repeats, Status.REPEAT)} of a trained point (not trained again)"
               if repeats else ""))


OPTUNA_STATES = {TrialState.FAIL: Status.FAILED, TrialState.PRUNED: Status.PRUNED}  # a trial without a status


def load_study(sweep_dir: Path) -> optuna.Study:
    """The study whose trials the sweep in `sweep_dir` ran (named in its study.json); StudyNotFound when its storage
    is gone or holds it no more."""
    spec = json.loads((sweep_dir / STUDY_FILE).read_text())
    try:
        return open_existing_study(spec["storage"], spec["study_name"])
    except StudyNotFound as error:
        raise StudyNotFound(f"{sweep_dir / STUDY_FILE} names study {spec['study_name']!r} in {error}") from None


def job_folders(sweep_dir: Path, *files: str) -> List[Path]:
    """The job folders of a plain sweep that hold any of `files`, in job order (0, 1, ..., 10, then others)."""
    folders = {path.parent for name in files for path in sweep_dir.glob(f"*/{name}")}
    return sorted(folders, key=lambda f: (not f.name.isdigit(), int(f.name) if f.name.isdigit() else f.name))


def load_runs(sweep_dir: Path) -> Tuple[List[Run], Optional[optuna.Study]]:
    """Every run of the sweep in `sweep_dir`, and its Optuna study if it ran one."""
    if (sweep_dir / STUDY_FILE).exists():
        study = load_study(sweep_dir)
        return study_runs(study), study
    return [read_run(folder, folder.name) for folder in job_folders(sweep_dir, SUMMARY_FILE, METRICS_FILE)], None


def varying_keys(runs: List[Run], ignore: str = "") -> List[str]:
    """The keys whose value differs between runs (all of a single run's keys), in the order they appear;
    `ignore` is never one of them."""
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.values) if k != ignore]
    varying = [k for k in keys if len({r.values.get(k) for r in runs}) > 1]
    return varying or keys
