"""What a user sees on the console while trials run: one line when a trial starts, progress bars for long work
(training, evaluation), one line when it ends.

Everything else (the Trainer's logs, library notices and warnings, Hydra's job lines, SwanLab's banner) goes to
each job's log file only (Hydra's job logging); `verbose=true` or `hydra.verbose=true` shows it all on the
console again (`ConsoleFilter` on the console handlers of Hydra's logging configs). `Console` is the Hydra
callback (conf/config.yaml `hydra.callbacks`) that prints the lines. Ctrl-C stops a trial at once wherever
it is (`catch_ctrl_c`); the task function records it as interrupted.
"""

import io
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ftharness.contract import SWEEP_SIZE_ENV, TRIAL_LABEL_ENV, Status, TrialSummary

PROJECT_LOGGERS = ("ftharness", "__main__")

_interrupted = threading.Event()


class SweepInterrupted(SystemExit):
    """Ctrl-C in a sweep, once the sweeper has recorded the interrupted trials and said how to resume: the process
    exits 130 without another line. A SystemExit, not a KeyboardInterrupt, so that any Hydra app using the sweeper
    ends there too (Python printed a KeyboardInterrupt's traceback under the sweeper's line)."""

    def __init__(self) -> None:
        super().__init__(130)


def _interrupt(signum, frame) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def _drop_lost_interrupt(unraisable) -> None:
    if not (unraisable.exc_type is KeyboardInterrupt and _interrupted.is_set()):
        sys.__unraisablehook__(unraisable)


def ctrl_c_pressed() -> bool:
    """Whether Ctrl-C was pressed in this process (since `catch_ctrl_c`). An error raised while its KeyboardInterrupt
    unwound library code is its consequence (seen in Hydra's launcher, inside OmegaConf: "'NoneType' object has no
    attribute '_invalidate_flags_cache'"), not a fault of its own."""
    return _interrupted.is_set()


def _may_handle_ctrl_c() -> bool:
    """Only the main thread can set a SIGINT handler; one that ignores SIGINT (a background job) keeps it ignored."""
    return threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def catch_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt and is remembered: one raised inside a garbage-collection callback is
    dropped by Python (silently here), so each progress bar update raises it again. Installed over SwanLab's
    handler too, which would end the run before the trial knows it is interrupted."""
    if _may_handle_ctrl_c():
        signal.signal(signal.SIGINT, _interrupt)
        sys.unraisablehook = _drop_lost_interrupt


@dataclass
class HeldCtrlC:
    pressed: bool = False  # whether Ctrl-C was pressed while `ctrl_c_held` held it


@contextmanager
def ctrl_c_held() -> Iterator[HeldCtrlC]:
    """Hold Ctrl-C for the block, short work that must not stop half-done (trials asked and not yet launched, which
    have no job to record the interruption): a press is remembered, not raised, and the caller reads `pressed` once
    the block is over; a second press raises KeyboardInterrupt at once. Outside the main thread, or where SIGINT is
    ignored, nothing changes."""
    held = HeldCtrlC()
    if not _may_handle_ctrl_c():
        yield held
        return

    def remember(signum, frame) -> None:
        if held.pressed:  # pressed again: the block may be stuck, let the user out
            raise KeyboardInterrupt
        held.pressed = True
        _interrupted.set()

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


class _Progress(tqdm):
    def update(self, n=1):
        if _interrupted.is_set():  # a Ctrl-C that Python dropped (see catch_ctrl_c)
            raise KeyboardInterrupt
        return super().update(n)


def progress(total: int, description: str, unit: str = "it") -> tqdm:
    """A progress bar on stderr for `total` units of work; use it as a context manager and call
    `.update(n)` (and `.set_postfix(...)` for live figures). It closes without a trace when done. An update
    after Ctrl-C raises KeyboardInterrupt, so long loops with a bar stop there."""
    return _Progress(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)


def quiet_library_notices() -> None:
    """For the plain CLIs (merge, compare, report). bitsandbytes warns at import, on CPUs with AVX512_BF16, that the
    optional `kernels` package (its 4-bit CPU kernels, fetched from the Hub) is missing; its own fallback runs.
    With no handler Python's last resort would print that on these CLIs; the Hydra CLI's handlers log it to the
    job's file."""
    logging.getLogger("bitsandbytes").addHandler(logging.NullHandler())


def say(line: str) -> None:
    """One line for the user, written above any progress bar."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class ConsoleFilter(logging.Filter):
    """The filter of the console handlers of Hydra's logging configs (conf/config.yaml): only warnings and errors
    of the harness itself, less those marked `extra={"console": False}` (e.g. a failed trial's traceback: its
    end line says why it failed); everything when `verbose` (the config key, or `hydra.verbose`)."""

    def __init__(self, verbose: Any = False, hydra_verbose: Any = False):
        super().__init__()
        self.verbose = bool(verbose) or bool(hydra_verbose)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        ours = record.name.startswith(PROJECT_LOGGERS)
        return ours and record.levelno >= logging.WARNING and getattr(record, "console", True)


class _LogStream(io.TextIOBase):
    """A text stream whose lines go to a logger (for libraries that print instead of logging)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.logger.info(line.rstrip())
        return len(text)

    def isatty(self) -> bool:
        return False


def route_library_output() -> None:
    """Send warnings, Optuna's and transformers' logs and SwanLab's prints through logging, so into the job's
    log file (and onto the console only when verbose), and turn the libraries' own bars off. It imports
    transformers: call it once it is needed."""
    import datasets
    import optuna
    import transformers

    logging.captureWarnings(True)
    optuna.logging.disable_default_handler()  # "A new study created": its own stderr handler
    optuna.logging.enable_propagation()

    transformers.utils.logging.disable_default_handler()  # its own stderr handler bypasses the log file
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights": a bar per trial, for a second
    datasets.disable_progress_bars()  # "Saving the dataset": the tokenization cache
    try:  # SwanLab prints its banner through a rich Console of its own (swanlab 0.10)
        from swanlab.sdk.internal.pkg import console as swanlab_console

        swanlab_console.c.file = _LogStream(logging.getLogger("swanlab"))
        swanlab_console.c.width = 1000  # one log line per message, not wrapped at 80 columns
    except (ImportError, AttributeError):
        pass


def swanlab_hint(config: DictConfig) -> Optional[str]:
    """The one line on where the curves are, for SwanLab's local and offline modes."""
    mode, log_dir = OmegaConf.select(config, "tracker.mode"), OmegaConf.select(config, "tracker.log_dir")
    if mode == "local":
        return f"curves: swanlab watch {log_dir}"
    if mode == "offline":
        return f"curves: saved offline in {log_dir} (swanlab sync <run folder> uploads one)"
    return None


def _sweep_size(config: DictConfig) -> Optional[int]:
    """The number of jobs of a plain Hydra sweep (the ftharness sweeper tells each job its own count)."""
    if "ftharness_sweeper" in str(OmegaConf.select(config, "hydra.sweeper._target_")):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from ftharness.config.overrides import task_overrides

    batches = BasicSweeper.split_arguments(task_overrides(config), None)
    return len(batches[0]) if batches else None


def trial_label(config: DictConfig) -> str:
    """`trial 4 (3/8)` in a study (its number, as in the results table, and its count of the budget),
    `job 2 (3/8)` in a plain sweep (its folder), `run` for a single run."""
    if os.environ.get(TRIAL_LABEL_ENV):
        return os.environ[TRIAL_LABEL_ENV]
    num = OmegaConf.select(config, "hydra.job.num")
    if str(OmegaConf.select(config, "hydra.mode")).endswith("MULTIRUN") and num is not None:
        size = os.environ.get(SWEEP_SIZE_ENV)
        return f"job {num} ({num + 1}/{size})" if size else f"job {num}"
    return "run"


def end_line(label: str, summary: TrialSummary, run_dir: Path) -> str:
    """`trial 0 (1/2)  completed  eval_loss 4.5  12.3 s`, or the state and reason of a trial that stopped
    early or failed (with its folder, where its log file tells more)."""
    from ftharness.ui.formatting import format_seconds, format_value

    status = summary.status or Status.FAILED
    parts = [label, status]
    if status == Status.COMPLETED and summary.objective:
        parts.append(f"{summary.objective.metric} {format_value(summary.objective.value)}")
    parts.append(format_seconds(summary.wall_time_s))
    if summary.reason:
        parts.append(summary.reason if status != Status.FAILED else f"{summary.reason} (log: {run_dir})")
    return "  ".join(p for p in parts if p)


class Console(Callback):
    """Hydra callback: a start and an end line per trial (sweeps and single runs), the SwanLab hint once."""

    def __init__(self):
        self.label = "run"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        size = _sweep_size(config)
        if size:
            os.environ[SWEEP_SIZE_ENV] = str(size)
        route_library_output()
        hint = swanlab_hint(config)
        if hint:
            say(hint)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ftharness.ui.tracking import run_name

        logging.captureWarnings(True)
        _interrupted.clear()
        catch_ctrl_c()
        in_sweep = str(config.hydra.mode).endswith("MULTIRUN")
        if not in_sweep and swanlab_hint(config):
            say(swanlab_hint(config))
        self.label = trial_label(config)
        say(f"{self.label}  {run_name(config.hydra.overrides.task)}")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.runtime.output_dir)
        summary = TrialSummary.read(run_dir) or TrialSummary()
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            summary = TrialSummary(Status.FAILED, error=f"{type(error).__name__}: {error}")
        say(end_line(self.label, summary, run_dir))


def one_line(error: Exception) -> str:
    """An error's message and its cause's as one line: Hydra's and OmegaConf's span several (`Could not override
    'z'.`, a hint, then the cause's `Key 'z' is not in struct` and indented details, left out)."""
    text = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip() and not line[0].isspace()]
    return "; ".join(lines) or type(error).__name__


def last_line(error: Exception) -> str:
    """The last line of an error's message (Hydra's wrapped errors end with the cause), else its type's name."""
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__
