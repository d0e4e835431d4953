"""How a study notices trials whose process died, and what becomes of them.

On an RDB storage each running trial gets a heartbeat from the sweep process that asked it, from its ask on
(Optuna's own heartbeat thread runs only inside `Study.optimize`; the sweeper uses ask / tell). A trial without
one for `grace_period` is failed by the next sweep process that takes stock, and then `StaleTrials` decides:
- its job got as far as a result (summary.json completed, pruned, diverged, oom: the sweep process died, or the
  storage stopped answering, before it could tell it) -> the result is told on a copy of the trial, so nothing
  trained is trained again;
- a confirmation -> nothing: the next run of the command plans it again with its seed (a retried copy would be asked
  by the main loop as a study trial);
- else -> its parameters are retried (Optuna's RetryHeartbeatStaleTrialCallback), at most `max_retry` times.
Journal files have no heartbeat: their dead trials stay RUNNING. Trials stopped by Ctrl-C need no heartbeat check:
`retry_interrupted` tells and retries them at once, the same way. A confirmation left waiting by an older ftharness
is failed at the start of the next sweep (`fail_waiting_confirmations`); a running trial that never had a heartbeat
gets one from the sweep that waits on it (`BeatlessTrials`).
"""

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftharness.contract import Status, StudyAttr, TrialAttr
from ftharness.sweep.confirmation import is_confirmation
from ftharness.sweep.optuna_objects import STORAGE_ERRORS, experimental, retried_number
from ftharness.sweep.telling import INFEASIBLE, summary_outcome, tell_interrupted

log = logging.getLogger(__name__)

RESULTS = (Status.COMPLETED, Status.PRUNED, Status.DIVERGED, Status.OOM)  # what a dead trial's summary may hold


@dataclass(frozen=True)
class Heartbeat:
    """How the study notices trials whose process died (RDB storages): they are failed and retried."""

    interval: int  # seconds between heartbeats of running trials
    grace_period: int  # a running trial without a heartbeat this long is failed
    max_retry: int  # times the parameters of a dead trial are retried


def has_heartbeat(storage) -> bool:
    """RDB storages with a heartbeat interval; journal files have none (their dead trials stay RUNNING)."""
    return bool(getattr(storage, "get_heartbeat_interval", lambda: None)())


def ask_with_heartbeat(study: optuna.Study, storage, **ask) -> optuna.trial.Trial:
    """`study.ask(**ask)` and, on an RDB storage, the new trial's first heartbeat at once. Its batch's `Heartbeats`
    start only at the launch, after the sampling, the composing and the memory check: a process that died in
    between (Ctrl-C, kill) left a RUNNING trial that Optuna never fails (it fails only trials that had a
    heartbeat), and the next run of the command waited for it for good (measured: past a 90 s timeout, its other
    trials done)."""
    with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize": we beat
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask(**ask)
    _first_heartbeat(storage, trial)
    return trial


def start_with_heartbeat(study: optuna.Study, storage, point: FrozenTrial, user_attrs: dict) -> optuna.trial.Trial:
    """A trial created running at `point`'s parameters with `user_attrs`, in one write, and its first heartbeat.
    Not enqueued and asked: any ask pops an enqueued trial (a study trial of another sweep process, or this
    process's next confirmation, which then ran with the marks of the one before), and a process killed between
    the two left it waiting for whichever ask came next. `fixed_params` as an enqueued trial has them: a grid
    sampler then gives it no grid point."""
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING, params=point.params, distributions=point.distributions, user_attrs=user_attrs,
        system_attrs={"fixed_params": point.params})
    trial_id = storage.create_new_trial(storage.get_study_id_from_name(study.study_name), template_trial=template)
    trial = optuna.trial.Trial(study, trial_id)
    _first_heartbeat(storage, trial)
    return trial


def _first_heartbeat(storage, trial: optuna.trial.Trial) -> None:
    if has_heartbeat(storage):
        storage.record_heartbeat(trial._trial_id)


class Heartbeats:
    """Records a heartbeat for the running trials of this process while a batch runs. A storage that stops
    answering stops the beats quietly: the sweep process meets the same error when it tells the batch, and says
    it there in one line."""

    def __init__(self, storage, trial_ids: List[int], interval: int):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)
            except STORAGE_ERRORS as error:
                log.info("heartbeats stopped: the storage did not answer (%s)", error)
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        if has_heartbeat(self.storage):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class BeatlessTrials:
    """One heartbeat for each running trial that a sweep has waited on for a grace period. Optuna fails only trials
    that had a beat: one without any (its sweep process killed between the ask and its first beat, or asked by an
    ftharness before 2026-12-07, which beat from the launch on) made the next run of the command wait for good. A
    trial whose process lives is unchanged by the beat (its own follow every interval); one whose process died now
    has a beat to miss, and the heartbeat check fails and retries it a grace period later."""

    def __init__(self, storage, grace_period: int):
        self.storage, self.grace_period = storage, grace_period
        self.first_seen: Dict[int, float] = {}  # trial id -> when the wait first saw it running
        self.beaten: Set[int] = set()

    def beat_once(self, running: List[FrozenTrial]) -> None:
        now = time.monotonic()
        for trial in running:
            waited = now - self.first_seen.setdefault(trial._trial_id, now)
            if waited > self.grace_period and trial._trial_id not in self.beaten:
                self.storage.record_heartbeat(trial._trial_id)
                self.beaten.add(trial._trial_id)
                log.info("trial %d: still running after %d s of waiting, given a heartbeat to miss", trial.number,
                         waited)


class StaleTrials:
    """The storage's callback for a trial whose heartbeat stopped (see the module's docstring)."""

    def __init__(self, max_retry: int):
        with experimental():  # since Optuna 2.8
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if _told_from_summary(study, trial) or is_confirmation(trial):
            return
        self.retry(study, trial)


def _told_from_summary(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Tell a dead trial's result on a copy of it, when its job wrote one (the copy names the dead trial as the
    one it stands for, as a retry does, so the budget counts the point once)."""
    run_dir = trial.user_attrs.get(TrialAttr.RUN_DIR)
    if not run_dir or not Path(run_dir).is_dir():
        return False
    state, values, attrs = summary_outcome(Path(run_dir), study.user_attrs.get(StudyAttr.METRICS) or ["objective"])
    if attrs.get(TrialAttr.STATUS) not in RESULTS or state == TrialState.FAIL:
        return False
    lineage = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number),  # as the retry callback
               "retry_history": [*trial.system_attrs.get("retry_history", []), trial.number]}  # writes them
    infeasible = {f"constraints:{attrs[TrialAttr.STATUS]}": 1.0} if attrs[TrialAttr.STATUS] in INFEASIBLE else {}
    study.add_trial(optuna.trial.create_trial(
        state=state, values=values, params=trial.params, distributions=trial.distributions,
        user_attrs={**trial.user_attrs, **attrs}, intermediate_values=trial.intermediate_values,
        system_attrs={**trial.system_attrs, **lineage, **infeasible}))  # `constraints:<name>`: Trial.set_constraint's
    log.info("trial %d: its job's result was told on a copy (%s)", trial.number, attrs[TrialAttr.STATUS])
    return True


def retry_interrupted(study: optuna.Study, trials: List[optuna.trial.Trial], folders: List[Optional[Path]],
                      max_retry: int) -> None:
    """Trials stopped by Ctrl-C: told interrupted at once (with their job's folder where it exists), their parameters
    queued for the next run of the command, as the heartbeat check would retry them after the grace period; a
    confirmation is planned again by the next run, with its seed."""
    with experimental():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    for trial, folder in zip(trials, folders):
        tell_interrupted(study, trial, folder)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        if not is_confirmation(frozen):
            with experimental():
                retry(study, frozen)


def queued_retries(study: optuna.Study) -> List[str]:
    """`trial 1 again (interrupted)`: the trials whose retries wait to run first, and why they are retried."""
    trials = study.get_trials(deepcopy=False)
    retries = []
    for waiting in trials:
        if waiting.state == TrialState.WAITING and retried_number(waiting) is not None:
            retried = trials[retried_number(waiting)]
            interrupted = retried.user_attrs.get(TrialAttr.STATUS) == Status.INTERRUPTED
            retries.append(f"trial {retried.number} again ({Status.INTERRUPTED if interrupted else 'its sweep died'})")
    return retries


def fail_waiting_confirmations(study: optuna.Study, storage) -> None:
    """Confirmations are created running (`start_with_heartbeat`); an ftharness before 2026-12-07 enqueued them, then
    asked, and one killed in between left a waiting confirmation, which Optuna's next ask would pop as a study trial
    under the confirmation's marks. Such a trial is failed with the reason (Optuna tells only running trials: the
    storage sets it); the confirmation phase plans its run again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if is_confirmation(trial):
            storage.set_trial_user_attr(trial._trial_id, TrialAttr.STATUS, Status.FAILED)
            storage.set_trial_user_attr(trial._trial_id, TrialAttr.REASON,
                                        "left waiting by an older ftharness; planned again")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            log.info("trial %d: a confirmation left waiting by an older ftharness, failed", trial.number)


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail running trials whose heartbeat stopped (their process died); `StaleTrials` decides what follows."""
    with experimental():
        optuna.storages.fail_stale_trials(study)


def others_running(study: optuna.Study, storage) -> bool:
    """Whether trials run that may still free slots: those of a process that died, which only a storage with
    heartbeats notices."""
    return has_heartbeat(storage) and any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))
