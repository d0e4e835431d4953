"""The ask / launch / tell loop of an Optuna study run as Hydra jobs.

One study, any number of sweep processes: each one counts the trials the study still misses, asks at most `n_jobs`
of them (ftharness/sweep/asking.py), launches them through Hydra's configured launcher and tells each its result,
read from the job's `summary.json` (ftharness/sweep/telling.py). Some asks run no job: a point over
`memory_budget_gb` is told `wont_fit` (ftharness/sweep/feasibility.py), a repeat of a point already trained is told
that trial's result. A study stores the settings its trials share and runs only for a sweep with the same
(ftharness/sweep/settings.py); a key that the command line fixes is not searched. Trials of processes that died are
noticed by their heartbeats (ftharness/sweep/heartbeats.py); a trial interrupted by Ctrl-C (held while its batch is
asked) is failed at once, as `interrupted`, and its parameters retried by the next run of the same command. The
sweeper's settings, and the app's keys they need, are checked before any trial (ftharness/sweep/budget.py). Once the
budget is spent,
`hydra.sweeper.confirm` runs the best points again with other seeds (ftharness/sweep/confirmation.py), trials that
the budget does not count.
"""

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import FrozenTrial, TrialState

from ftharness.config.overrides import RATIO, config_key, searched_params
from ftharness.contract import (
    MAX_STEPS_KEY,
    SEED_KEY,
    STORAGE_ENV,
    STUDY_ENV,
    STUDY_FILE,
    SWEPT_KEYS_ENV,
    TRIAL_ENV,
    TRIAL_LABEL_ENV,
    Status,
    StudyAttr,
    TrialAttr,
)
from ftharness.sweep.asking import (
    counted,
    current_trials,
    extra_asks,
    free_slots,
    seeded_ask,
    surplus_reason,
    trained_twin,
)
from ftharness.sweep.best import write_best
from ftharness.sweep.budget import Budget, StudyTarget, check_keys_it_sets, check_sweep_settings
from ftharness.sweep.confirmation import confirmed_points, planned_runs
from ftharness.sweep.confirmation import verdict as confirmation_verdict
from ftharness.sweep.devices import device_env
from ftharness.sweep.feasibility import FeasibilityCheck, task_config
from ftharness.sweep.heartbeats import (
    BeatlessTrials,
    Heartbeat,
    Heartbeats,
    StaleTrials,
    fail_dead_trials,
    fail_waiting_confirmations,
    others_running,
    queued_retries,
    retry_interrupted,
    start_with_heartbeat,
)
from ftharness.sweep.job_env import declare_job_env, job_env_overrides
from ftharness.sweep.job_folders import JobFolders
from ftharness.sweep.optuna_objects import (
    STORAGE_ERRORS,
    SweepConfigError,
    experimental,
    make_pruner,
    make_sampler,
    open_sweep_storage,
    quiet_optuna,
    resolve_storage,
    shown_url,
    storage_error_line,
)
from ftharness.sweep.settings import StudySettings, check_settings
from ftharness.sweep.space import SearchSpace, custom_space_function
from ftharness.sweep.telling import (
    default_metric_names,
    job_outcome,
    tell_not_launched,
    tell_outcome,
    tell_repeat,
    tell_wont_fit,
)
from ftharness.ui.console import SweepInterrupted, ctrl_c_held, ctrl_c_pressed, one_line, say
from ftharness.ui.formatting import number_of
from ftharness.ui.tracking import run_name

log = logging.getLogger(__name__)

WAIT_POLL_S = 5  # how often a sweep without free slots checks on the trials that other processes run
CLUSTER_LAUNCHERS = {"SlurmLauncher", "RayAWSLauncher"}  # launcher classes whose jobs get devices and cores from
# the cluster (hydra-submitit-launcher's SLURM one, hydra-ray-launcher's AWS one)


class TooManyFailures(SweepConfigError):
    """The sweep stops: its failed trials passed hydra.sweeper.max_failure_rate. Hydra's end-of-sweep callback
    does not run then; the Hydra side of the sweeper writes the results and the report itself."""


class StorageStopped(SweepConfigError):
    """The study's storage stopped answering (a database server went down): the sweep stops in one line. What was
    told is kept; a trial whose job finished meanwhile is told from its summary.json by the next run
    (ftharness/sweep/heartbeats.py `StaleTrials`)."""


class StudySweep(Sweeper):
    """The sweep loop: free slots in the study's budget -> ask a batch -> launch it -> tell the results."""

    def __init__(self, study: StudyTarget, budget: Budget, heartbeat: Heartbeat, sampler: DictConfig,
                 pruner: DictConfig, params: Dict[str, str], custom_search_space: Optional[str] = None) -> None:
        self.study, self.budget, self.heartbeat = study, budget, heartbeat
        self.custom_search_space = custom_search_space  # its function, imported in setup
        self.custom_suggestions: Optional[Callable] = None
        self.storage_url = study.storage
        self.sampler_spec, self.pruner_spec, self.params = sampler, pruner, params
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None
        self.feasibility = FeasibilityCheck(budget.memory_budget_gb, budget.n_jobs)

    @classmethod
    def from_config(cls, study_name: str, storage: Optional[str], metric: Any, direction: Any, n_trials: int,
                    n_jobs: int, devices_per_trial: int, max_failure_rate: float, heartbeat_interval: int,
                    grace_period: int, max_retry: int, seeds: int, sampler: DictConfig, pruner: DictConfig,
                    confirm: DictConfig, params: Optional[DictConfig], memory_budget_gb: Any,
                    custom_search_space: Optional[str] = None) -> "StudySweep":
        """The sweep of `hydra.sweeper` (hydra_plugins/ftharness_sweeper/config.py), its settings checked."""
        directions = _as_list(direction)
        metrics = _as_list(metric) if metric is not None else default_metric_names(len(directions))
        study = StudyTarget(study_name, storage, metrics, directions)
        budget = Budget(n_trials, n_jobs, seeds, devices_per_trial, max_failure_rate, confirm.top_k, confirm.seeds,
                        confirm.budget, memory_budget_gb)
        heartbeat = Heartbeat(heartbeat_interval, grace_period, max_retry)
        check_sweep_settings(study, budget, heartbeat, sampler.name)
        return cls(study, budget, heartbeat, sampler, pruner,
                   OmegaConf.to_container(params, resolve=True) if params else {}, custom_search_space)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        check_keys_it_sets(config, self.budget)
        self.config, self.hydra_context = config, hydra_context
        self.custom_suggestions = custom_space_function(self.custom_search_space)
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.storage_url = resolve_storage(self.storage_url, Path(config.hydra.runtime.cwd), self.study.name)
        on_this_machine = type(self.launcher).__name__ not in CLUSTER_LAUNCHERS
        devices = device_env(self.budget.devices_per_trial, self.budget.n_jobs) if on_this_machine else {}
        # every job changes its trial and label; a confirmation its swept keys too (`seed` joins them)
        declare_job_env(config, {STUDY_ENV: self.study.name, STORAGE_ENV: self.storage_url, **devices, TRIAL_ENV: "",
                                 TRIAL_LABEL_ENV: "", SWEPT_KEYS_ENV: os.environ.get(SWEPT_KEYS_ENV, "")})

    def sweep(self, arguments: List[str]) -> Any:
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(arguments)
        fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed if not o.is_sweep_override()]
        space = self._search_space(parsed)
        # made now, so that a wrong option stops the sweep before its storage opens (each ask makes its sampler)
        make_sampler(self.sampler_spec, self.sampler_spec.seed, space.grid() if self._grid else None)
        make_pruner(self.pruner_spec)
        storage = open_sweep_storage(self.storage_url, self.heartbeat.interval, self.heartbeat.grace_period,
                                     StaleTrials(self.heartbeat.max_retry))
        try:
            return self._run(storage, space, fixed)
        except STORAGE_ERRORS as error:
            raise StorageStopped(f"study {self.study.name}: its storage {shown_url(self.storage_url)} stopped "
                                 f"answering ({storage_error_line(error)}). The trials told so far are kept; once "
                                 "it answers again, run the same command to resume") from None
        except KeyboardInterrupt:  # between trials, or pressed twice while a batch was asked (ctrl_c_held)
            say("interrupted; run the same command to resume")
            raise SweepInterrupted from None

    def _search_space(self, parsed: List[Override]) -> SearchSpace:
        """The preset's space (`hydra.sweeper.params`) where the command line wins: a key it fixes is not
        searched, a key it sweeps is searched over the command line's values."""
        fixed = {config_key(o.get_key_element()): o.get_value_element_as_str()
                 for o in parsed if not o.is_sweep_override()}
        sweeps = [o for o in parsed if o.is_sweep_override()]
        params = searched_params(self.params, fixed)
        for key in sorted(self.params.keys() - params.keys()):
            target = key.split(RATIO)[0]
            say(f"{target}={fixed[target]} fixed on the command line: not searched")
        for override in sweeps:
            key = config_key(override.get_key_element())
            if key in params:
                say(f"{override.input_line} on the command line: searched in place of the "
                    f"preset's {params[key]}")
        seeds = range(self.config.seed, self.config.seed + self.budget.seeds) if self.budget.seeds > 1 else ()
        return SearchSpace(params, sweeps, seeds, fixed)

    def _run(self, storage, space: SearchSpace, fixed: List[str]) -> List[List[JobReturn]]:
        study = self._open_study(storage, space, fixed)
        fail_waiting_confirmations(study, storage)
        n_trials = self.budget.n_trials
        base = min(n_trials, math.prod(map(len, space.grid().values()))) if self._grid else n_trials
        say(_start_line(study, base, self._grid, shown_url(self.storage_url)))
        returns, job_idx = [], 0
        while (slots := self._wait_for_free_slots(study, storage, base)) > 0:
            with ctrl_c_held() as ctrl_c:  # a trial asked and not launched has no job that could record a Ctrl-C
                trials, batch = self._next_batch(study, storage, space, fixed, base, slots)
            if ctrl_c.pressed:
                self._interrupted(study, trials)
            if not trials:  # another sweep process asked at the same moment, or no point needs a job: count again
                continue
            jobs, job_idx = self._launch(study, storage, trials, batch, job_idx)
            returns.append(jobs)
        returns += self._confirm(study, storage, space, fixed, job_idx)
        write_best(study, Path(self.config.hydra.sweep.dir))
        return returns

    def _next_batch(self, study: optuna.Study, storage, space: SearchSpace, fixed: List[str], base: int,
                    slots: int) -> Tuple[List[optuna.trial.Trial], List[List[str]]]:
        """Up to n_jobs new trials and their jobs' overrides; the asked points that need no job are told at once."""
        extra = extra_asks(study, base, self._grid)
        budget = base + extra
        asked = [t for t in (self._ask(study, storage, space, budget) for _ in range(min(self.budget.n_jobs, slots)))
                 if t]
        labels = [f"trial {t.number} ({budget - slots - extra + i}/{base})" for i, t in enumerate(asked, 1)]
        runnable = [(t, label) for t, label in zip(asked, labels)
                    if not self._told_without_job(study, t, [*fixed, *space.overrides(t.params)], label)]
        batch = [[*fixed, *space.overrides(t.params), *self._job_env(t, label)] for t, label in runnable]
        return [t for t, _ in runnable], batch

    def _told_without_job(self, study: optuna.Study, trial: optuna.trial.Trial, overrides: List[str],
                          label: str) -> bool:
        """Tell the trial at once when it needs no job: its point repeats one the study trained (told that trial's
        result), or its memory estimate is over the budget (told `wont_fit`)."""
        twin = None if self._grid else trained_twin(study, trial)
        if twin is not None:
            say(f"{label}  {tell_repeat(study, trial, twin, self.study.metrics)}")
            return True
        if not self.feasibility.applies_to(self.config):
            return False
        wont_fit = self.feasibility.wont_fit(task_config(self._compose(overrides)))
        if wont_fit is None:
            return False
        tell_wont_fit(study, trial, wont_fit.reason, wont_fit.excess)
        say(f"{label}  {Status.WONT_FIT}  {run_name(overrides)}: {wont_fit.reason}")
        return True

    def _launch(self, study: optuna.Study, storage, trials: List[optuna.trial.Trial], batch: List[List[str]],
                job_idx: int) -> Tuple[List[JobReturn], int]:
        """Launch a batch of jobs, one per trial, with heartbeats while they run; tell each its result. Returns the
        jobs and the next job number. The jobs' folders are claimed from `job_idx` on, past those of other sweep
        processes in the same folder (ftharness/sweep/job_folders.py). Each trial knows its job's folder from the
        start: should the sweep process die, or the storage stop answering, before it is told, the next run tells it
        from the summary.json there."""
        job_idx, folders = JobFolders(self.config, self._compose).claim(batch, job_idx)
        for trial, folder in zip(trials, folders):
            trial.set_user_attr(TrialAttr.RUN_DIR, str(folder))
        with Heartbeats(storage, [t._trial_id for t in trials], self.heartbeat.interval):
            try:
                self.validate_batch_is_legal(batch)
                jobs = self.launcher.launch(batch, initial_job_idx=job_idx)
            except KeyboardInterrupt:
                self._interrupted(study, trials, folders)
            except Exception as error:  # noqa: BLE001 -- its trials are failed, then the error goes on
                if ctrl_c_pressed():  # an error raised as Ctrl-C unwound the launcher is the interruption
                    self._interrupted(study, trials, folders)
                self._not_launched(study, trials, error)
        for trial, job in zip(trials, jobs):
            tell_outcome(study, trial, job_outcome(job, self.study.metrics))
        return jobs, job_idx + len(batch)

    def _compose(self, overrides: List[str]) -> DictConfig:
        """A job's config, composed from the sweep's and the job's overrides as the launcher composes it."""
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _confirm(self, study: optuna.Study, storage, space: SearchSpace, fixed: List[str],
                 job_idx: int) -> List[List[JobReturn]]:
        """The confirmation phase: the study's best points again with other seeds, no pruning, in batches of
        n_jobs; the runs that a run of the same command told already are not repeated."""
        top_k, seeds, steps = self.budget.confirm_top_k, self.budget.confirm_seeds, self.budget.confirm_budget
        plan = planned_runs(study, top_k, seeds, self.config.seed, steps) if top_k else []
        if not plan:
            return []
        each = f"{number_of(seeds, 'seed' if steps else 'other seed')} each"
        horizon = f"{each} at {MAX_STEPS_KEY}={steps}" if steps else each
        say(f"confirm: the best {number_of(top_k, 'point')} again with {horizon}, no pruning "
            f"({number_of(len(plan), 'trial')})")
        at_budget = [f"{MAX_STEPS_KEY}={steps}"] if steps else []
        replaced = (SEED_KEY, MAX_STEPS_KEY) if steps else (SEED_KEY,)
        fixed = [override for override in fixed if override.split("=")[0] not in replaced]
        keys = ",".join(dict.fromkeys([*filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")), SEED_KEY]))
        returns = []
        for start in range(0, len(plan), self.budget.n_jobs):
            runs = plan[start:start + self.budget.n_jobs]
            with ctrl_c_held() as ctrl_c:
                trials = [self._ask_confirmation(study, storage, point, seed, steps) for point, seed in runs]
            if ctrl_c.pressed:
                self._interrupted(study, trials)
            batch = [[*fixed, *space.overrides(point.params), f"{SEED_KEY}={seed}", *at_budget,
                      *self._job_env(trial, f"confirm {start + i}/{len(plan)}", keys)]  # run names end in `seed=43`
                     for i, ((point, seed), trial) in enumerate(zip(runs, trials), 1)]
            jobs, job_idx = self._launch(study, storage, trials, batch, job_idx)
            returns.append(jobs)
        say(f"confirm: {confirmation_verdict(study, confirmed_points(study)) or 'one point confirmed'}")
        return returns

    def _ask_confirmation(self, study: optuna.Study, storage, point: FrozenTrial, seed: int,
                          steps: Optional[int]) -> optuna.trial.Trial:
        """A trial of the study at `point`'s parameters, marked as its confirmation with `seed` (at `steps`)."""
        marks = {TrialAttr.CONFIRMS: point.number, TrialAttr.SEED: seed,
                 **({TrialAttr.BUDGET: steps} if steps else {})}
        trial = start_with_heartbeat(study, storage, point, marks)
        self._suggest_custom(study, trial)  # the point's values: suggestions return them
        return trial

    def _suggest_custom(self, study: optuna.Study, trial: optuna.trial.Trial) -> None:
        """The parameters `hydra.sweeper.custom_search_space` suggests on an asked trial; should it raise, the trial
        is failed, never left running, and the sweep stops."""
        if self.custom_suggestions is None:
            return
        try:
            self.custom_suggestions(self.config, trial)
        except Exception as error:  # noqa: BLE001 -- whatever the user's function raised, its trial fails with it
            self._not_launched(study, [trial], error)

    def _open_study(self, storage, space: SearchSpace, fixed: List[str]) -> optuna.Study:
        """Create the study or load it to resume, once its settings are those of this sweep; note this sweep's
        folder, where the results tables go."""
        with quiet_optuna():
            study = optuna.create_study(study_name=self.study.name, storage=storage,
                                        directions=self.study.directions, pruner=make_pruner(self.pruner_spec),
                                        load_if_exists=True)
        job_config = task_config(self._compose(fixed))
        note = check_settings(study, StudySettings.of(job_config, space.searched_keys), self.storage_url,
                              "name" if self.study.name == self.config.get("name") else "hydra.sweeper.study_name")
        if note:
            say(note)
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

    def _wait_for_free_slots(self, study: optuna.Study, storage, base: int) -> int:
        """The trials still to ask (0: the sweep is done). While none are left but other processes run trials,
        wait: a process may have died, and then the heartbeat check fails its trials and their retries free slots
        again."""
        waiting, beatless = False, BeatlessTrials(storage, self.heartbeat.grace_period)
        while True:
            fail_dead_trials(study)
            self._check_failure_rate(study, base)
            slots = free_slots(study, base + extra_asks(study, base, self._grid))
            if slots > 0 or not others_running(study, storage):
                return slots
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not waiting:  # on the console: the wait may last grace_period (90 s by default) without a line
                say(f"waiting for trial {', '.join(str(t.number) for t in running)}: run by another process, or left "
                    f"by one that died (then retried after {self.heartbeat.grace_period} s without a heartbeat)")
                waiting = True
            beatless.beat_once(running)
            time.sleep(min(WAIT_POLL_S, self.heartbeat.interval))

    def _ask(self, study: optuna.Study, storage, space: SearchSpace, budget: int) -> Optional[optuna.trial.Trial]:
        """A new trial of the study; None when it came out surplus (`surplus_reason`): told at once, never run."""
        trial = seeded_ask(study, storage, self.sampler_spec, space.distributions, space.grid() if self._grid else None)
        self._suggest_custom(study, trial)
        reason = surplus_reason(study, trial, budget, self._grid)
        if reason is None:
            return trial
        trial.set_user_attr(TrialAttr.STATUS, Status.SURPLUS)
        trial.set_user_attr(TrialAttr.REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
        log.info("trial %d: not run, %s", trial.number, reason)
        return None

    @property
    def _grid(self) -> bool:
        return self.sampler_spec.name == "grid" and not self.sampler_spec.get("_target_")

    @staticmethod
    def _job_env(trial: optuna.trial.Trial, label: str, swept_keys: Optional[str] = None) -> List[str]:
        """The job's own values of the environment `setup` declared (ftharness/sweep/job_env.py): its trial, its
        label on the console, and for a confirmation the swept keys that name its run."""
        env = {TRIAL_ENV: str(trial._trial_id), TRIAL_LABEL_ENV: label}
        return job_env_overrides({**env, SWEPT_KEYS_ENV: swept_keys} if swept_keys else env)

    def _interrupted(self, study: optuna.Study, trials: List[optuna.trial.Trial],
                     folders: Optional[List[Path]] = None) -> NoReturn:
        """Ctrl-C during a batch (or while it was asked: no folders yet): its trials are recorded interrupted and
        queued for the next run of the command (ftharness/sweep/heartbeats.py), and the command stops (exit 130)."""
        if not trials:
            raise KeyboardInterrupt  # nothing asked: as between trials (`sweep` says it)
        retry_interrupted(study, trials, folders or [None] * len(trials), self.heartbeat.max_retry)
        say(f"interrupted in trial {', '.join(str(t.number) for t in trials)}; run the same command to resume")
        raise SweepInterrupted

    @staticmethod
    def _not_launched(study: optuna.Study, trials: List[optuna.trial.Trial], error: Exception) -> NoReturn:
        """A batch whose launch raised: its trials are failed with the reason. A config error (a searched key that
        the app's config lacks, a bad value) stops the sweep in one line naming it; any other error as it is."""
        reason = one_line(error)
        for trial in trials:
            tell_not_launched(study, trial, reason)
        if isinstance(error, (HydraException, OmegaConfBaseException)):
            raise SweepConfigError(f"trial {', '.join(str(t.number) for t in trials)} not launched: {reason}") \
                from None
        raise error

    def _check_failure_rate(self, study: optuna.Study, budget: int) -> None:
        failed = [t for t in current_trials(study) if t.state == TrialState.FAIL]
        if len(failed) > self.budget.max_failure_rate * budget:
            write_best(study, Path(self.config.hydra.sweep.dir))
            last = failed[-1].user_attrs.get(TrialAttr.REASON)
            raise TooManyFailures(f"study {self.study.name}: {len(failed)} failed trials exceed max_failure_rate="
                                  f"{self.budget.max_failure_rate} of {budget}; last: {last}")


def _start_line(study: optuna.Study, base: int, grid: bool, storage: str) -> str:
    """Whether the study is new or resumed, and what is left of it: `resuming default-study: 14 of 14 trials exist,
    nothing to train`, `resuming app: 1 of 3 trials exist, 2 to go; first trial 1 again (interrupted)`."""
    if not study.get_trials(deepcopy=False):
        return f"new study {study.study_name} in {storage}: {base} trials"
    exist = min(counted(study) - extra_asks(study, base, grid), base)
    if exist == base:
        return f"resuming {study.study_name}: {exist} of {base} trials exist, nothing to train"
    retries = queued_retries(study)
    first = f"; first {', '.join(retries)}" if retries else ""
    return f"resuming {study.study_name}: {exist} of {base} trials exist, {base - exist} to go{first}"


def _as_list(value: Any) -> List[str]:
    return [value] if isinstance(value, str) else list(value)
