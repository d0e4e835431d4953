"""The ask / launch / tell loop of an Optuna study run as Hydra jobs (its search space: ftharness/sweep/space.py).

One study, any number of sweep processes: each one counts the trials the study still misses, asks at most `n_jobs`
of them, launches them through Hydra's configured launcher and tells each its result, read from the job's
`summary.json` (completed, pruned, diverged or failed). A diverged or out-of-memory trial is a result about its
point, not a failure of the harness: it is told as pruned and infeasible (an Optuna constraint), so that TPE, GP and
NSGA-II rank it below every feasible trial and learn to avoid its region; a failed trial (FAIL) teaches the sampler
nothing. Measured in simulation over 24 sampler seeds, the mean best eval loss against the full grid's best for the
constraint on diverged trials: 1.04 -> 1.02 for today's default study; mixed for the former 8-trial median study
(1.46 -> 1.52 with interpolated curves, 1.45 -> 1.40 with the nearest measured ones). A point whose memory estimate
is over `memory_budget_gb` is told before launch, as `wont_fit` (ftharness/sweep/feasibility.py). Trials of
processes that died are failed by Optuna's heartbeat check and their parameters retried; a trial interrupted by
Ctrl-C is failed at once, as `interrupted`, and its parameters retried by the next run of the same command. Once the
budget is spent, `hydra.sweeper.confirm` runs the best points again with other seeds
(ftharness/sweep/confirmation.py), trials that the budget does not count.
"""

import json
import logging
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ftharness.config.overrides import override_text
from ftharness.contract import (
    DEVICES_ENV,
    DEVICES_PER_TRIAL_ENV,
    SEED_KEY,
    STORAGE_ENV,
    STUDY_ENV,
    STUDY_FILE,
    SWEPT_KEYS_ENV,
    THREADS_ENV,
    TRIAL_ENV,
    TRIAL_LABEL_ENV,
    Status,
    StudyAttr,
    TrialAttr,
    TrialSummary,
)
from ftharness.sweep.best import write_best
from ftharness.sweep.confirmation import confirmed_points, is_confirmation, planned_runs
from ftharness.sweep.confirmation import verdict as confirmation_verdict
from ftharness.sweep.devices import visible_devices, worker_threads
from ftharness.sweep.feasibility import FeasibilityCheck, check_budget_setting, task_config
from ftharness.sweep.optuna_objects import (
    SweepConfigError,
    experimental,
    make_pruner,
    make_sampler,
    open_storage,
    resolve_storage,
)
from ftharness.sweep.space import SearchSpace
from ftharness.ui.console import SweepInterrupted, say
from ftharness.ui.tracking import run_name

log = logging.getLogger(__name__)

INFEASIBLE = (Status.DIVERGED, Status.OOM)  # told as pruned with a violated constraint of that name: the sampler
# avoids them (as it avoids the points told `wont_fit` before launch)
WAIT_POLL_S = 5  # how often a sweep without free slots checks on the trials that other processes run
CLUSTER_LAUNCHERS = {"SlurmLauncher", "RayAWSLauncher"}  # launcher classes whose jobs get devices and cores from
# the cluster (hydra-submitit-launcher's SLURM one, hydra-ray-launcher's AWS one)


class TooManyFailures(SweepConfigError):
    """The sweep stops: its failed trials passed hydra.sweeper.max_failure_rate. Hydra's end-of-sweep callback
    does not run then; the Hydra side of the sweeper writes the results and the report itself."""


@dataclass(frozen=True)
class StudyTarget:
    """The study a sweep runs, and what it optimizes."""

    name: str
    storage: Optional[str]  # as configured; null: sqlite under outputs/studies/<study>.db (resolved in setup)
    metrics: List[str]
    directions: List[str]  # one per metric


@dataclass(frozen=True)
class Budget:
    """How many trials a study runs, how many at once, on how many GPUs each, and when it gives up."""

    n_trials: int
    n_jobs: int
    seeds: int  # grid studies: each point runs with this many seeds
    devices_per_trial: int
    max_failure_rate: float
    confirm_top_k: int  # best points run again with other seeds after the study (ftharness/sweep/confirmation.py)
    confirm_seeds: int
    memory_budget_gb: Any  # auto | GB per trial | None: points over it are told `wont_fit` before launch


@dataclass(frozen=True)
class Heartbeat:
    """How the study notices trials whose process died (RDB storages): they are failed and retried."""

    interval: int  # seconds between heartbeats of running trials
    grace_period: int  # a running trial without a heartbeat this long is failed
    max_retry: int  # times the parameters of a dead trial are retried


def _has_heartbeat(storage) -> bool:
    """RDB storages with a heartbeat interval; journal files have none (their dead trials stay RUNNING)."""
    return bool(getattr(storage, "get_heartbeat_interval", lambda: None)())


class _Heartbeats:
    """Records a heartbeat for the running trials of this process (Optuna's own heartbeat thread only runs
    inside `Study.optimize`, and the sweeper uses ask / tell)."""

    def __init__(self, storage, trial_ids: List[int], interval: int):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        if _has_heartbeat(self.storage):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class StudySweep(Sweeper):
    """The sweep loop: free slots in the study's budget -> ask a batch -> launch it -> tell the results."""

    def __init__(self, study: StudyTarget, budget: Budget, heartbeat: Heartbeat, sampler: DictConfig,
                 pruner: DictConfig, params: Dict[str, str]) -> None:
        self.study, self.budget, self.heartbeat = study, budget, heartbeat
        self.storage_url = study.storage
        self.sampler_spec, self.pruner_spec, self.params = sampler, pruner, params
        self.device_env: Dict[str, str] = {}
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None
        self.feasibility = FeasibilityCheck(budget.memory_budget_gb, budget.n_jobs)

    @classmethod
    def from_config(cls, study_name: str, storage: Optional[str], metric: Any, direction: Any, n_trials: int,
                    n_jobs: int, devices_per_trial: int, max_failure_rate: float, heartbeat_interval: int,
                    grace_period: int, max_retry: int, seeds: int, sampler: DictConfig, pruner: DictConfig,
                    confirm: DictConfig, params: Optional[DictConfig], memory_budget_gb: Any) -> "StudySweep":
        """The sweep of `hydra.sweeper` (hydra_plugins/ftharness_sweeper/config.py), its settings checked."""
        metrics, directions = _as_list(metric), _as_list(direction)
        if len(metrics) != len(directions):
            raise SweepConfigError(f"hydra.sweeper: {len(metrics)} metric(s) but {len(directions)} direction(s)")
        if devices_per_trial < 0:
            raise SweepConfigError(f"hydra.sweeper.devices_per_trial={devices_per_trial}: allowed: 0 (no pinning) "
                                   "or more GPUs per trial")
        if seeds < 1 or (seeds > 1 and sampler.name != "grid"):
            raise SweepConfigError(f"hydra.sweeper.seeds={seeds}: allowed: 1, or more seeds per point of a grid "
                                   f"study (sampler.name=grid; this one is {sampler.name})")
        if confirm.top_k < 0 or confirm.seeds < 1:
            raise SweepConfigError(f"hydra.sweeper.confirm: top_k={confirm.top_k}, seeds={confirm.seeds}: allowed: "
                                   "top_k 0 (off) or more points, seeds 1 or more")
        if confirm.top_k and (seeds > 1 or len(metrics) > 1):
            raise SweepConfigError(f"hydra.sweeper.confirm.top_k={confirm.top_k}: allowed only for a study of one "
                                   "objective whose points run with one seed (hydra.sweeper.seeds=1)")
        check_budget_setting(memory_budget_gb)
        return cls(StudyTarget(study_name, storage, metrics, directions),
                   Budget(n_trials, n_jobs, seeds, devices_per_trial, max_failure_rate, confirm.top_k,
                          confirm.seeds, memory_budget_gb),
                   Heartbeat(heartbeat_interval, grace_period, max_retry), sampler, pruner,
                   OmegaConf.to_container(params, resolve=True) if params else {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.storage_url = resolve_storage(self.storage_url, Path(config.hydra.runtime.cwd), self.study.name)
        if type(self.launcher).__name__ not in CLUSTER_LAUNCHERS:
            self.device_env = device_env(self.budget.devices_per_trial, self.budget.n_jobs)

    def sweep(self, arguments: List[str]) -> Any:
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(arguments)
        seeds = range(self.config.seed, self.config.seed + self.budget.seeds) if self.budget.seeds > 1 else ()
        space = SearchSpace(self.params, [o for o in parsed if o.is_sweep_override()], seeds)
        fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed if not o.is_sweep_override()]
        storage = open_storage(self.storage_url, self.heartbeat.interval, self.heartbeat.grace_period,
                               self.heartbeat.max_retry)
        study = self._open_study(storage)
        if self._grid:
            self._check_grid_resumes(study, space)
        n_trials = self.budget.n_trials
        base = min(n_trials, math.prod(map(len, space.grid().values()))) if self._grid else n_trials
        log.info("study %s in %s: %d of %d trials exist", self.study.name, self.storage_url, _counted(study), base)
        returns, job_idx = [], 0
        while (slots := self._wait_for_free_slots(study, storage, base)) > 0:
            extra = self._wont_fit_allowance(study, base)
            budget = base + extra
            asked = [t for t in (self._ask(study, space, budget) for _ in range(min(self.budget.n_jobs, slots))) if t]
            labels = [f"trial {t.number} ({budget - slots - extra + i}/{base})" for i, t in enumerate(asked, 1)]
            runnable = [(t, label) for t, label in zip(asked, labels)
                        if not self._told_wont_fit(study, t, [*fixed, *space.overrides(t.params)], label)]
            if not runnable:  # another sweep process asked at the same moment, or no point fits: count again
                continue
            trials = [t for t, _ in runnable]
            batch = [[*fixed, *space.overrides(t.params), *self._job_env(t),
                      f"+hydra.job.env_set.{TRIAL_LABEL_ENV}={override_text(label)}"]
                     for t, label in runnable]
            jobs = self._launch(study, storage, trials, batch, job_idx)
            job_idx += len(batch)
            returns.append(jobs)
        returns += self._confirm(study, storage, space, fixed, job_idx)
        write_best(study, Path(self.config.hydra.sweep.dir))
        return returns

    def _told_wont_fit(self, study: optuna.Study, trial: optuna.trial.Trial, overrides: List[str], label: str) -> bool:
        """Tell the trial at once as `wont_fit` when its point's memory estimate is over the budget: pruned, with
        a violated constraint as large as the excess, so that the sampler learns the region; no job runs."""
        if not self.feasibility.enabled:
            return False
        composed = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        wont_fit = self.feasibility.wont_fit(task_config(composed))
        if wont_fit is None:
            return False
        trial.set_user_attr(TrialAttr.STATUS, Status.WONT_FIT)
        trial.set_user_attr(TrialAttr.REASON, wont_fit.reason)
        trial.set_constraint(Status.WONT_FIT, wont_fit.excess)
        _tell_state(study, trial, None, TrialState.PRUNED)
        say(f"{label}  {Status.WONT_FIT}  {run_name(overrides)}: {wont_fit.reason}")
        return True

    def _launch(self, study: optuna.Study, storage, trials: List[optuna.trial.Trial], batch: List[List[str]],
                job_idx: int) -> List[JobReturn]:
        """Launch a batch of jobs, one per trial, with heartbeats while they run; tell each its result."""
        self.validate_batch_is_legal(batch)
        with _Heartbeats(storage, [t._trial_id for t in trials], self.heartbeat.interval):
            try:
                jobs = self.launcher.launch(batch, initial_job_idx=job_idx)
            except KeyboardInterrupt:
                self._interrupted(study, trials, job_idx)
        for trial, job in zip(trials, jobs):
            self._tell(study, trial, job)
        return jobs

    def _confirm(self, study: optuna.Study, storage, space: SearchSpace, fixed: List[str],
                 job_idx: int) -> List[List[JobReturn]]:
        """The confirmation phase: the study's best points again with other seeds, no pruning, in batches of
        n_jobs; the runs that a run of the same command told already are not repeated."""
        top_k, seeds = self.budget.confirm_top_k, self.budget.confirm_seeds
        plan = planned_runs(study, top_k, seeds, self.config.seed) if top_k else []
        if not plan:
            return []
        say(f"confirm: the best {top_k} point(s) again with {seeds} other seed(s) each, no pruning "
            f"({len(plan)} trials)")
        fixed = [override for override in fixed if override.split("=")[0] != SEED_KEY]
        keys = ",".join(dict.fromkeys([*filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")), SEED_KEY]))
        named = f"+hydra.job.env_set.{SWEPT_KEYS_ENV}={override_text(keys)}"  # run names end in `seed=43`
        returns = []
        for start in range(0, len(plan), self.budget.n_jobs):
            runs = plan[start:start + self.budget.n_jobs]
            trials = [self._ask_confirmation(study, space, point, seed) for point, seed in runs]
            batch = [[*fixed, *space.overrides(point.params), f"{SEED_KEY}={seed}", *self._job_env(trial), named,
                      f"+hydra.job.env_set.{TRIAL_LABEL_ENV}={override_text(f'confirm {start + i}/{len(plan)}')}"]
                     for i, ((point, seed), trial) in enumerate(zip(runs, trials), 1)]
            returns.append(self._launch(study, storage, trials, batch, job_idx))
            job_idx += len(batch)
        say(f"confirm: {confirmation_verdict(study, confirmed_points(study)) or 'one point confirmed'}")
        return returns

    @staticmethod
    def _ask_confirmation(study: optuna.Study, space: SearchSpace, point: FrozenTrial,
                          seed: int) -> optuna.trial.Trial:
        """A trial of the study at `point`'s parameters, marked as its confirmation with `seed`."""
        study.enqueue_trial(point.params, user_attrs={TrialAttr.CONFIRMS: point.number, TrialAttr.SEED: seed},
                            skip_if_exists=False)
        return study.ask(fixed_distributions=space.distributions)

    def _open_study(self, storage) -> optuna.Study:
        """Create the study or load it to resume; note this sweep's folder, where the results tables go."""
        study = optuna.create_study(study_name=self.study.name, storage=storage, directions=self.study.directions,
                                    pruner=make_pruner(self.pruner_spec), load_if_exists=True)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # where the report finds all of the study's trials, also those of earlier (resumed) sweeps
        (sweep_dir / STUDY_FILE).write_text(json.dumps({"study_name": self.study.name, "storage": self.storage_url}))
        study.set_user_attr(StudyAttr.METRICS, self.study.metrics)  # names the objective columns of the results table
        with experimental():  # since Optuna 3.2
            study.set_metric_names(self.study.metrics)  # optuna-dashboard then shows eval_loss, not "Objective 0"
        study.set_user_attr(StudyAttr.LAST_SWEEP_DIR, str(sweep_dir.resolve()))
        return study

    def _check_grid_resumes(self, study: optuna.Study, space: SearchSpace) -> None:
        """A grid study resumes only over the same keys: trials over others (e.g. made before `seeds` was raised)
        would take up grid points they never ran."""
        other = next((t for t in study.get_trials(deepcopy=False)
                      if t.state.is_finished() and set(t.params) != set(space.distributions)), None)
        if other is not None:
            raise SweepConfigError(f"study {self.study.name}: its trial {other.number} swept {sorted(other.params)}, "
                                   f"this grid sweeps {sorted(space.distributions)}; delete {self.storage_url} "
                                   "or give the sweep another name= to start a new study")

    def _wont_fit_allowance(self, study: optuna.Study, base: int) -> int:
        """Asks over `base` that the study may make: one per point told `wont_fit`, up to `base` of them (a bound,
        should most of the space be over the budget), so that a study trains its n_trials points; a grid's points
        are each asked once: none."""
        if self._grid:
            return 0
        return min(sum(t.user_attrs.get(TrialAttr.STATUS) == Status.WONT_FIT for t in _current_trials(study)), base)

    def _wait_for_free_slots(self, study: optuna.Study, storage, base: int) -> int:
        """The trials still to ask (0: the sweep is done). While none are left but other processes run trials,
        wait: a process may have died, and then the heartbeat check fails its trials and their retries free slots
        again."""
        waiting = False
        while True:
            self._take_stock(study, base)
            slots = _free_slots(study, base + self._wont_fit_allowance(study, base))
            if slots > 0 or not _others_running(study, storage):
                return slots
            if not waiting:
                log.info("budget used up: waiting for the trials other processes run (those of a dead process "
                         "are retried after %d s without heartbeat)", self.heartbeat.grace_period)
                waiting = True
            time.sleep(min(WAIT_POLL_S, self.heartbeat.interval))

    def _take_stock(self, study: optuna.Study, budget: int) -> None:
        """Fail the running trials whose process died (the storage retries their parameters), then end the sweep
        when too many trials failed."""
        _fail_dead_trials(study)
        self._check_failure_rate(study, budget)

    def _ask(self, study: optuna.Study, space: SearchSpace, budget: int) -> Optional[optuna.trial.Trial]:
        """Ask with a sampler seeded by the trial count, so that resumed and parallel sweeps draw new points; a
        grid sampler keeps its seed: it shuffles the grid by it and gives trial number k the k-th point, so that
        every process agrees on which trial runs which point. None when the trial came out surplus
        (`_surplus_reason`): it is told at once and never runs."""
        base_seed = self.sampler_spec.seed
        seed = None if base_seed is None else base_seed + (0 if self._grid else len(study.trials))
        study.sampler = make_sampler(self.sampler_spec, seed, space.grid() if self._grid else None)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": we beat ourselves
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask(fixed_distributions=space.distributions)
        reason = self._surplus_reason(study, trial, budget)
        if reason is None:
            return trial
        trial.set_user_attr(TrialAttr.STATUS, Status.SURPLUS)
        trial.set_user_attr(TrialAttr.REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
        log.info("trial %d: not run, %s", trial.number, reason)
        return None

    def _surplus_reason(self, study: optuna.Study, trial: optuna.trial.Trial, budget: int) -> Optional[str]:
        """Why a trial asked in a race with another sweep process on the same study must not run: Optuna cannot
        ask "if the budget is not used up" atomically, and two grid samplers seeded alike pick the same point.
        The earlier trial number wins, so exactly one of the two processes gives its trial up."""
        earlier = [t for t in _current_trials(study) if t.number < trial.number and t.state != TrialState.WAITING]
        if len(earlier) >= budget:
            return f"the study's {budget} trials were asked by another sweep process"
        twin = next((t for t in earlier if self._grid and t.params == trial.params), None)
        return None if twin is None else f"trial {twin.number} runs the same grid point"

    @property
    def _grid(self) -> bool:
        return self.sampler_spec.name == "grid"

    def _job_env(self, trial: optuna.trial.Trial) -> List[str]:
        """Per-job environment (applied by Hydra around the task function) that names the study and trial, and
        the device pool or thread share of this machine's jobs."""
        env = {STUDY_ENV: self.study.name, STORAGE_ENV: self.storage_url, TRIAL_ENV: str(trial._trial_id),
               **self.device_env}
        return [f"+hydra.job.env_set.{key}={override_text(value)}" for key, value in env.items()]

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, job: JobReturn) -> None:
        state, values, attrs = job_outcome(job, self.study.metrics)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if attrs.get(TrialAttr.STATUS) in INFEASIBLE:
            trial.set_constraint(attrs[TrialAttr.STATUS], 1.0)  # > 0: violated
        _tell_state(study, trial, values, state)
        log.info("trial %d: %s %s %s", trial.number, state.name, values or "", attrs.get(TrialAttr.REASON) or "")

    def _interrupted(self, study: optuna.Study, trials: List[optuna.trial.Trial], job_idx: int) -> None:
        """Ctrl-C during a batch: record its trials as interrupted at once, queue their parameters for the next
        run of the command (as Optuna's heartbeat retry would, without waiting for the grace period), and stop the
        command (it exits 130)."""
        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.heartbeat.max_retry)
        for i, trial in enumerate(trials):
            run_dir = sweep_dir / str(job_idx + i)
            trial.set_user_attr(TrialAttr.STATUS, Status.INTERRUPTED)
            trial.set_user_attr(TrialAttr.REASON, "interrupted (Ctrl-C)")
            if run_dir.is_dir():
                trial.set_user_attr(TrialAttr.RUN_DIR, str(run_dir))
            study.tell(trial, state=TrialState.FAIL)
            frozen = study.get_trials(deepcopy=False)[trial.number]
            if not is_confirmation(frozen):  # a confirmation is planned again by the next run, with its seed
                with experimental():
                    retry(study, frozen)
        say(f"interrupted in trial {', '.join(str(t.number) for t in trials)}; run the same command to resume")
        raise SweepInterrupted

    def _check_failure_rate(self, study: optuna.Study, budget: int) -> None:
        failed = [t for t in _current_trials(study) if t.state == TrialState.FAIL]
        if len(failed) > self.budget.max_failure_rate * budget:
            write_best(study, Path(self.config.hydra.sweep.dir))
            last = failed[-1].user_attrs.get(TrialAttr.REASON)
            raise TooManyFailures(f"study {self.study.name}: {len(failed)} failed trials exceed max_failure_rate="
                                  f"{self.budget.max_failure_rate} of {budget}; last: {last}")


def _tell_state(study: optuna.Study, trial: optuna.trial.Trial, values: Optional[List[float]],
                state: TrialState) -> None:
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as error:  # GridSampler calls Study.stop() once the grid is done: only optimize() may
        if "Study.stop" not in str(error):
            raise


def job_outcome(job: JobReturn, metrics: List[str]) -> Tuple[TrialState, Optional[List[float]], Dict[str, Any]]:
    """(state, objective values, user attrs) of a finished job, from the summary.json it wrote."""
    run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
    attrs: Dict[str, Any] = {TrialAttr.RUN_DIR: str(run_dir)}
    failed = {**attrs, TrialAttr.STATUS: Status.FAILED}
    try:
        job.return_value  # noqa: B018 -- the property raises the job's exception if it escaped the task function
    except Exception as error:  # noqa: BLE001 -- whatever the job raised, the trial failed with it
        return TrialState.FAIL, None, {**failed, TrialAttr.REASON: f"{type(error).__name__}: {error}"}
    summary = TrialSummary.read(run_dir)
    if summary is None:
        return TrialState.FAIL, None, {**failed, TrialAttr.REASON: "the job wrote no summary.json"}
    attrs.update({TrialAttr.STATUS: summary.status, TrialAttr.STEPS: summary.steps,
                  TrialAttr.WALL_TIME_S: summary.wall_time_s, TrialAttr.WEIGHTS_DIR: summary.weights_dir,
                  TrialAttr.SUMMARY: summary.as_dict(),  # the report's, wherever it runs
                  TrialAttr.REASON: summary.stop_reason or summary.error})
    if summary.status == Status.PRUNED or summary.status in INFEASIBLE:
        return TrialState.PRUNED, None, attrs
    if summary.status != Status.COMPLETED:
        return TrialState.FAIL, None, attrs
    values = [summary.metric(name) for name in metrics]
    if any(v is None or not math.isfinite(v) for v in values):
        return TrialState.FAIL, None, {**attrs, TrialAttr.REASON: f"objective {metrics} is not a number: {values}"}
    return TrialState.COMPLETE, values, attrs


def device_env(devices_per_trial: int, n_jobs: int) -> Dict[str, str]:
    """What the jobs of a launcher on this machine need to share it (ftharness/sweep/devices.py): the GPU pool,
    and each parallel worker's share of the CPU cores."""
    pool = visible_devices() if devices_per_trial else []
    if devices_per_trial > len(pool) > 0:
        raise SweepConfigError(f"hydra.sweeper.devices_per_trial={devices_per_trial}: this machine's pool "
                               f"has {len(pool)} GPU(s) ({','.join(pool)})")
    env = {THREADS_ENV: str(worker_threads(n_jobs))} if n_jobs > 1 else {}
    if pool:
        if n_jobs * devices_per_trial > len(pool):
            log.info("n_jobs=%d trials of %d GPU(s) on a pool of %d: the others wait for a free one",
                     n_jobs, devices_per_trial, len(pool))
        env.update({DEVICES_ENV: ",".join(pool), DEVICES_PER_TRIAL_ENV: str(devices_per_trial)})
    return env


def _as_list(value: Any) -> List[str]:
    return [value] if isinstance(value, str) else list(value)


def _current_trials(study: optuna.Study) -> List[FrozenTrial]:
    """The study's trials, less those whose process died and whose parameters were retried, the surplus and the
    confirmations (which the budget does not count)."""
    trials = study.get_trials(deepcopy=False)
    with experimental():
        retried = {optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    return [t for t in trials if t.number not in retried and t.user_attrs.get(TrialAttr.STATUS) != Status.SURPLUS
            and not is_confirmation(t)]


def _free_slots(study: optuna.Study, budget: int) -> int:
    """The trials of the budget that are not asked yet."""
    return max(budget - _counted(study), 0)


def _others_running(study: optuna.Study, storage) -> bool:
    """Whether trials run that may still free slots: those of a process that died, which only a storage with
    heartbeats notices."""
    return _has_heartbeat(storage) and _running(study)


def _counted(study: optuna.Study) -> int:
    """Trials that use up the budget: all but the waiting (enqueued, e.g. retried) ones."""
    return sum(t.state != TrialState.WAITING for t in _current_trials(study))


def _running(study: optuna.Study) -> bool:
    return any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


def _fail_dead_trials(study: optuna.Study) -> None:
    """Fail running trials whose heartbeat stopped (their process died); the storage retries their params."""
    with experimental():
        optuna.storages.fail_stale_trials(study)
