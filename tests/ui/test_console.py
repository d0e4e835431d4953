"""The console's parts without a trial: what the log filter lets through, the end line, and a Ctrl-C that
Python dropped being raised again at the next progress update. (The console of real sweeps: tests/e2e/test_cli.py.)"""

import logging
import signal
import sys
from pathlib import Path

import pytest

from ftharness.contract import TrialSummary
from ftharness.ui import console
from ftharness.ui.console import ConsoleFilter, end_line, progress


def record(name: str, level: int, **extra) -> logging.LogRecord:
    item = logging.LogRecord(name, level, __file__, 1, "message", None, None)
    item.__dict__.update(extra)
    return item


@pytest.mark.parametrize("name,level,extra,shown", [
    ("ftharness.report.sweep_report", logging.WARNING, {}, True),
    ("ftharness.sweep.loop", logging.ERROR, {}, True),
    ("ftharness.model.loading", logging.INFO, {}, False),  # "loading base model": the log file only
    ("__main__", logging.ERROR, {"console": False}, False),  # a failed trial's traceback: its end line says why
    ("bitsandbytes.backends.cpu.ops", logging.WARNING, {}, False),  # the "kernels" notice
    ("py.warnings", logging.WARNING, {}, False),  # transformers' FutureWarning
    ("hydra._internal.core_plugins.basic_launcher", logging.INFO, {}, False),  # the job override lines
])
def test_the_console_shows_only_the_harness_s_own_warnings(name, level, extra, shown):
    assert ConsoleFilter().filter(record(name, level, **extra)) is shown
    assert ConsoleFilter(verbose=True).filter(record(name, level, **extra))
    assert ConsoleFilter(hydra_verbose=True).filter(record(name, level, **extra))


def test_the_end_line_says_state_objective_time_and_reason():
    objective = {"metric": "eval_loss", "direction": "minimize"}
    done = TrialSummary.from_dict({"status": "completed", "objective": {**objective, "value": 0.044567},
                                   "wall_time_s": 52.31})
    assert end_line("trial 0 (1/8)", done, Path("x")) == "trial 0 (1/8)  completed  eval_loss 0.0446  52.3 s"
    pruned = TrialSummary.from_dict({"status": "pruned", "stop_reason": "pruned at step 4 (eval_loss 1.372)",
                                     "wall_time_s": 140.0, "objective": {**objective, "value": None}})
    assert end_line("trial 1 (2/8)", pruned, Path("x")) == \
        "trial 1 (2/8)  pruned  2.3 min  pruned at step 4 (eval_loss 1.372)"
    failed = TrialSummary.from_dict({"status": "failed", "error": "ConfigError: lora.r=0 is invalid"})
    assert end_line("job 2 (3/4)", failed, Path("out/2")) == \
        "job 2 (3/4)  failed  ConfigError: lora.r=0 is invalid (log: out/2)"


def test_a_dropped_ctrl_c_is_raised_again_at_the_next_progress_update():
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # an earlier test or library may have left SIG_IGN
    try:
        console.catch_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert console._interrupted.is_set()  # as if Python had dropped it in a garbage-collection callback
        with progress(3, "work") as bar, pytest.raises(KeyboardInterrupt):
            bar.update(1)
    finally:
        console._interrupted.clear()
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = sys.__unraisablehook__


def test_ctrl_c_held_is_remembered_until_the_block_ends_and_a_second_press_gets_out_at_once():
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with console.ctrl_c_held() as held:
            signal.raise_signal(signal.SIGINT)  # held: no KeyboardInterrupt here
            done = True
        assert done and held.pressed and console.ctrl_c_pressed()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        with pytest.raises(KeyboardInterrupt), console.ctrl_c_held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # a block that seems stuck: the second press raises
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with console.ctrl_c_held() as quiet:
            pass
        assert not quiet.pressed
    finally:
        console._interrupted.clear()
        signal.signal(signal.SIGINT, previous)
