"""ftharness/sweep/heartbeats.py on a study in memory: what a resumed sweep says of the retries waiting in it (the
dead and interrupted trials themselves are run end to end in test_integrity.py, test_sweeper.py, test_any_app.py)."""

import optuna
from optuna.trial import TrialState

from ftharness.sweep.heartbeats import queued_retries, retry_interrupted
from ftharness.sweep.optuna_objects import experimental


def test_the_retries_waiting_in_a_study_are_named_with_the_trial_they_retry_and_why():
    study = optuna.create_study()
    study.tell(study.ask(), 1.0)
    died, interrupted = study.ask(), study.ask()
    study.tell(died, state=TrialState.FAIL)  # by the heartbeat check, then retried as its callback does
    with experimental():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[died.number])
    retry_interrupted(study, [interrupted], [None], max_retry=3)
    study.enqueue_trial({"x": 1.0})  # queued by hand: no retry
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING", "WAITING", "WAITING"]
    assert queued_retries(study) == ["trial 1 again (its sweep died)", "trial 2 again (interrupted)"]
    assert queued_retries(optuna.create_study()) == []
