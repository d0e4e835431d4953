"""What passes between the processes of a sweep: the trial's record, its status words, the environment that
the sweeper and the Hydra callbacks hand each job, and the attributes the study stores.

A trial runs in its own job (a process of the launcher, or a node of a cluster), the sweeper in another, and
the report may read the study years later on another machine; they share no memory, only these files,
variables and attributes. Each is defined here once, and every stage reads it through these names:
- `summary.json` in the job's folder: a `TrialSummary`, written once by the trial (or, when the trial
  raised, by the task function), read by the sweeper, the console, the report, merge and compare. Its JSON
  is the one runs written before this module existed have: old run folders read as they are.
- `metrics.jsonl` beside it: one record per logged step (`kind` train or eval), the curves the report draws.
- `study.json` in a sweep folder: the study (name, storage) whose trials the sweep ran.
- the `FTHARNESS_*` environment variables below, and the study's and trials' user attributes (`StudyAttr`,
  `TrialAttr`): the sweeper writes them, the jobs and the report read them.
"""

import json
import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

SUMMARY_FILE = "summary.json"  # a trial's record, in its job folder
METRICS_FILE = "metrics.jsonl"  # a trial's logged steps, one JSON record a line, in its job folder
STUDY_FILE = "study.json"  # written into a sweep folder: the study (name, storage) whose trials it ran


class Status(StrEnum):
    """How a trial ended (or where it stands): the `status` of its summary.json, of its study trial and of its row
    in the results table. The values are the words written into files, so runs written earlier read the same."""

    COMPLETED = "completed"  # trained to its last step and measured
    PRUNED = "pruned"  # stopped by the study's pruner
    DIVERGED = "diverged"  # stopped by the divergence guard (loss or grad_norm not finite, or exploding)
    OOM = "oom"  # out of memory at its smallest micro-batch
    FAILED = "failed"  # raised an error (invalid input, a crash): its summary holds the error
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C; a study retries its parameters at the next run
    SURPLUS = "surplus"  # asked in a race with another sweep process, told at once, never run
    WONT_FIT = "wont_fit"  # its memory estimate is over the sweep's memory budget: told at once, never run
    REPEAT = "repeat"  # its point equals one the study trained already: told that trial's result, never run
    RUNNING = "running"  # a study trial that has not ended (its process may still run, or have died)
    WAITING = "waiting"  # a study trial queued to retry a dead one, not started yet


# ---- the environment of a job ---------------------------------------------------------------------------
# Set per job by the ftharness sweeper (`hydra.job.env_set`):
STUDY_ENV = "FTHARNESS_STUDY"  # the study's name
STORAGE_ENV = "FTHARNESS_STORAGE"  # its storage URL (see sweep/optuna_objects.py open_storage)
TRIAL_ENV = "FTHARNESS_TRIAL_ID"  # the trial's id in the storage (not its number)
TRIAL_LABEL_ENV = "FTHARNESS_TRIAL_LABEL"  # `trial 4 (3/8)`: the trial's number and its count of the budget
DEVICES_ENV = "FTHARNESS_DEVICES"  # the GPU pool, comma-separated CUDA device ids (the sweep's visible devices)
DEVICES_PER_TRIAL_ENV = "FTHARNESS_DEVICES_PER_TRIAL"  # devices one trial leases
THREADS_ENV = "FTHARNESS_THREADS"  # CPU threads of one trial (its share of the cores among parallel workers)
# Set by the Hydra callbacks of any sweep (report/end_of_sweep.py SweepSummary, ui/console.py Console):
SWEPT_KEYS_ENV = "FTHARNESS_SWEPT_KEYS"  # the swept keys, comma-separated: they name the runs
SWEEP_ENV = "FTHARNESS_SWEEP"  # as JSON, the sweep's SwanLab group and the colour scale of its first swept key
SWEEP_SIZE_ENV = "FTHARNESS_SWEEP_SIZE"  # the number of jobs of a plain Hydra sweep, for `job 2 (3/8)`
# Set by `python -m ftharness from_best=...` for its one run (sweep/from_best.py):
FROM_BEST_ENV = "FTHARNESS_FROM_BEST"  # as JSON, where the run's parameters came from: its summary's `from_best`
# Set by the user:
LOCKS_ENV = "FTHARNESS_DEVICE_LOCKS"  # the folder of the device locks (default: a per-user folder in /tmp)
CACHE_ENV = "FTHARNESS_CACHE"  # conf/config.yaml `cache_dir`: converted models, tokenized data


# ---- what the study stores ------------------------------------------------------------------------------
class StudyAttr:
    """The user attributes of an Optuna study that the sweeper sets."""

    METRICS = "metrics"  # the objective names, in the study's order: the results table's columns
    LAST_SWEEP_DIR = "last_sweep_dir"  # the folder of the study's last sweep: where its tables go by default
    SETTINGS = "settings"  # what every trial shares, {dotted key: value}: a sweep with others never joins it


class TrialAttr:
    """The user attributes of an Optuna trial: the sweeper's (its outcome) and its job's (host, curves)."""

    STATUS = "status"  # a Status: what Optuna's states (FAIL, PRUNED, ...) cannot tell apart
    REASON = "reason"  # why it stopped early or failed
    RUN_DIR = "run_dir"  # its job folder (on the host below)
    STEPS = "steps"  # optimizer steps it made
    WALL_TIME_S = "wall_time_s"  # seconds from start to summary
    WEIGHTS_DIR = "weights_dir"  # its saved adapter (or model)
    SUMMARY = "summary"  # its summary.json as a dict: the report's, wherever the report runs
    HOST = "host"  # the machine its job ran on
    DEVICES = "devices"  # the GPU(s) its job was pinned to (CUDA_VISIBLE_DEVICES)
    CURVE = "curve:"  # prefix: `curve:<series>` holds [[step, value], ...] as the job logged them
    CONFIRMS = "confirms"  # a confirmation trial: the number of the trial whose point it runs with another seed
    SEED = "seed"  # a confirmation trial's seed
    BUDGET = "budget"  # a confirmation trial's optimizer steps, when not the study's (confirm.budget)
    REPEATS = "repeats"  # a repeat (Status.REPEAT): the number of the trained trial whose point it is


SEED_KEY = "seed"  # the config key a sweep's seeds set (conf/config.yaml `seed`): a trial parameter of seeded grids
MAX_STEPS_KEY = "train.max_steps"  # the config key of a run's length, which confirm.budget sets
TRAIN_CURVES = ("loss", "grad_norm", "learning_rate")  # the series of the train logs; `eval_loss` of the evals
METRIC_FIELDS = {"train_loss": "final_loss"}  # objective names whose summary field is named differently


# ---- summary.json ---------------------------------------------------------------------------------------
@dataclass
class Objective:
    """What a sweep optimizes, and the trial's value of it (NaN when the trial has none)."""

    metric: str
    direction: str  # minimize | maximize
    value: float


@dataclass
class TrialSummary:
    """A trial's summary.json. A trained trial (completed, pruned or diverged) records everything below; an
    out-of-memory one its objective, sequence length and memory estimate; a failed or interrupted one only its
    error. A run that wrote no summary reads as an empty one (`status` None, every field unset)."""

    status: Optional[Status] = None
    stop_reason: Optional[str] = None  # why training stopped early (pruned, diverged, out of memory)
    run_name: str = ""  # `lr=3.49e-4,r=8`: the tracker's name of the run
    params: Dict[str, str] = field(default_factory=dict)  # the job's overrides, `key: value` as typed
    error: Optional[str] = None  # a failed trial's `Type: message`
    objective: Optional[Objective] = None
    sequence_length: Optional[int] = None  # out of memory: data.max_length
    before: Dict[str, Any] = field(default_factory=dict)  # the base's eval loss and test scores
    after: Dict[str, Any] = field(default_factory=dict)  # the trained adapter's
    final_loss: Optional[float] = None  # the last logged train loss
    final_grad_norm: Optional[float] = None
    data: Optional[Dict[str, Any]] = None  # split sizes, skipped rows, rows without a reply
    eval_rows: Optional[Dict[str, int]] = None  # rows of the periodic and of the final evaluation
    steps: Optional[int] = None  # optimizer steps made
    epochs: Optional[float] = None
    tokens_seen: Optional[int] = None  # non-padding tokens trained on
    train_tokens_per_s: Optional[float] = None  # tokens_seen over steps_time_s (the steps, less any compile)
    train_time_s: Optional[float] = None  # the optimizer steps alone (no loading, no evaluation)
    eval_time_s: Optional[float] = None  # the adapter's evaluations: periodic ones, during training, and the final one
    compile_time_s: Optional[float] = None  # with train.compile: the part of train_time_s spent compiling (0: reused)
    peak_memory_mb: Optional[float] = None
    memory_kind: Optional[str] = None  # what peak_memory_mb measured (model/memory.py PeakMemory)
    memory_estimate: Optional[Dict[str, Any]] = None  # model/memory.py MemoryEstimate.as_dict
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    device: Optional[str] = None  # cpu | cuda
    device_name: Optional[str] = None  # the CPU's or GPU's model name
    precision: Optional[str] = None  # fp32 | bf16 | fp16
    model_dtype: Optional[str] = None  # the dtype the base loaded in
    attention: Optional[str] = None
    model_path: Optional[str] = None  # the base, resolved (an embedded model's local folder)
    weights_dir: Optional[str] = None  # the saved adapter (or model), None when not saved
    micro_batch: Optional[Dict[str, Any]] = None  # the micro-batch and accumulation it ran at, and the retries
    wall_time_s: Optional[float] = None  # from start to summary
    from_best: Optional[Dict[str, Any]] = None  # a `from_best=` run: the study, trial and parameters it took
    extra: Dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept as they are

    @property
    def reason(self) -> str:
        """Why it stopped early or failed ("" when it completed)."""
        return self.stop_reason or self.error or ""

    @property
    def steps_time_s(self) -> Optional[float]:
        """train_time_s less its compile time: what the trial's settings cost, alike for a trial that compiled and
        one that reused its process's graphs (a compile took 69 s of a 48-step SmolLM2 trial's 108 s on a CPU)."""
        return None if self.train_time_s is None else self.train_time_s - (self.compile_time_s or 0)

    @property
    def objective_value(self) -> float:
        return self.objective.value if self.objective is not None else math.nan

    def metric(self, name: str) -> Optional[float]:
        """A metric of the trial by its objective name: the trained adapter's scores (`after`) first, then the
        summary's own fields (`train_loss` is `final_loss`, `wall_time_s`, `peak_memory_mb`, ...)."""
        name = METRIC_FIELDS.get(name, name)
        value = self.after.get(name, self.as_dict().get(name))
        return None if value is None else float(value)

    def as_dict(self) -> Dict[str, Any]:
        """The JSON object of summary.json: the fields this kind of record holds, in their order."""
        record = {name: getattr(self, name) for name in self._layout()
                  if not (name in LATER_FIELDS and getattr(self, name) is None)}
        if record.get("objective") is not None:
            record["objective"] = vars(self.objective).copy()
        return {**record, **self.extra}

    def _layout(self) -> Tuple[str, ...]:
        if self.error is not None:
            return FAILURE_FIELDS
        return OOM_FIELDS if self.status == Status.OOM else TRAINED_FIELDS

    def write(self, run_dir: Path) -> Path:
        path = run_dir / SUMMARY_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, record: Dict[str, Any]) -> "TrialSummary":
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: value for key, value in record.items() if key in known}
        if values.get("status") is not None:
            values["status"] = Status(values["status"])
        if values.get("objective") is not None:
            values["objective"] = Objective(**values["objective"])
        return cls(**values, extra={key: value for key, value in record.items() if key not in known})

    @classmethod
    def read(cls, run_dir: Path) -> Optional["TrialSummary"]:
        """The summary.json in `run_dir`, None when there is none."""
        path = run_dir / SUMMARY_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None


FAILURE_FIELDS = ("status", "run_name", "params", "error")
LATER_FIELDS = ("eval_time_s", "compile_time_s", "from_best")  # added after runs were written without them: left out
# while unset, so that an old summary.json writes back as it was
OOM_FIELDS = ("status", "stop_reason", "run_name", "params", "objective", "sequence_length", "memory_estimate",
              "micro_batch", "wall_time_s", "from_best")
TRAINED_FIELDS = ("status", "stop_reason", "run_name", "params", "objective", "before", "after", "final_loss",
                  "final_grad_norm", "data", "eval_rows", "steps", "epochs", "tokens_seen", "train_tokens_per_s",
                  "train_time_s", "eval_time_s", "compile_time_s", "peak_memory_mb", "memory_kind", "memory_estimate",
                  "trainable_params", "total_params", "device", "device_name", "precision", "model_dtype", "attention",
                  "model_path", "weights_dir", "micro_batch", "wall_time_s", "from_best")
