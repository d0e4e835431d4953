"""Shared fixtures: configs composed like the CLI does, on the tiny model, with tracking off."""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from ftharness.config.schema import register_schema
from ftharness.contract import FROM_BEST_ENV
from ftharness.sweep.devices import share_cores, worker_threads

# pytest-xdist's workers (scripts/test.sh: 2) share the cores: each, and the CLI subprocesses it starts (through
# OMP_NUM_THREADS), gets its share. Two processes with a thread per core each oversubscribe the cores: two CLI
# trials at once took 86 s on 2 cores with 2 threads each, 18 s with 1 thread each.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share_cores(worker_threads(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FIXTURES = Path(__file__).parent / "fixtures"  # a few rows in each supported data format
# Small splits and budgets keep each tiny-model trial to a second or two. fp32: the same numbers on every CPU
# (precision=auto takes bf16 where the CPU has AVX512_BF16 / AMX, and bf16 rounds tiny-lr losses together).
TINY = ["model=tiny", "tracker.mode=disabled", "data.train_size=48", "data.eval_size=8", "data.test_size=16",
        "train.max_steps=4", "train.eval_steps=2", "eval.max_new_tokens=4", "train.precision=fp32"]
# Plain SGD where a LoRA scaled by alpha / r = 6e10 explodes (grad_norm 2e10 at step 1, NaN at step 2, at every
# seed and dropout draw) and alpha 16 trains. Moderate alphas do not do: whether a tiny model diverges or collapses
# (its RMSNorms saturate and the gradient vanishes) depended on the dropout draws, so a change of dropout
# sampler turned the old alpha 1024 fixture from diverged to completed. Adam would not do either: its steps do
# not grow with the gradient.
EXPLODING_ALPHA = "1000000000000"
DIVERGING = ["train.max_steps=6", "optim.name=sgd", "optim.lr=1", "optim.warmup=0", "optim.max_grad_norm=0",
             f"lora.alpha=choice(16,{EXPLODING_ALPHA})"]


def compose_config(*overrides: str, tiny: bool = True):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*(TINY if tiny else []), *overrides])


def run_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m ftharness ...` in a subprocess, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "ftharness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


@pytest.fixture(autouse=True)
def no_from_best_left_behind(monkeypatch):
    """from_best_arguments hands its point to the run through this process's environment; left there, it would make
    every later `run_cli` of the same worker a "best of" run. (A `delenv` of an unset variable records nothing to
    undo: the `setenv` first makes the teardown remove whatever a test set.)"""
    monkeypatch.setenv(FROM_BEST_ENV, "")
    monkeypatch.delenv(FROM_BEST_ENV)


def only_run_dir(cwd: Path, name: str = "default") -> Path:
    dirs = list((cwd / "outputs" / "runs" / name).iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def finished_job(run_dir: Path, returned: Any = float("nan"), status: JobStatus = JobStatus.COMPLETED) -> JobReturn:
    """What Hydra's launcher hands the sweeper for a job that ran in `run_dir`: its task function's return value, or
    with JobStatus.FAILED the exception that escaped it."""
    return JobReturn(status=status, _return_value=returned,
                     hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}}))


def read_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def swanlab_series(log_dir: Path, run_name: str) -> Dict[str, List[tuple]]:
    """{metric: [(step, value), ...]} of one SwanLab local run, read from its files (not through SwanLab)."""
    db = sqlite3.connect(log_dir / "runs.swanlab")
    (experiment_id, run_id), = db.execute("select id, run_id from experiment where name = ?", (run_name,))
    series = {}
    for key, folder in db.execute("select name, folder from tag where experiment_id = ?", (experiment_id,)):
        lines = []
        for part in sorted((log_dir / run_id / "logs" / folder).glob("*.log")):
            lines += [json.loads(line) for line in part.read_text().splitlines()]
        series[key] = [(line["index"], line["data"]) for line in lines]
    return series


def swanlab_project(log_dir: Path) -> tuple:
    """(project name, run names) of the SwanLab local folder `log_dir`."""
    db = sqlite3.connect(log_dir / "runs.swanlab")
    (project,), = db.execute("select name from project")
    return project, sorted(name for name, in db.execute("select name from experiment"))


class PostgresServer:
    """A PostgreSQL server of its own on 127.0.0.1 (Debian's postgresql package), in a temporary folder."""

    def __init__(self):
        initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or [shutil.which("initdb")]
        if initdb[-1] is None:
            pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
        self.bin_dir, self.data = Path(initdb[-1]).parent, Path(tempfile.mkdtemp(prefix="ftharness-pg-"))
        self.owner = []
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(self.data, "postgres")
            self.owner = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run([*self.owner, self.bin_dir / "initdb", "-D", self.data / "db", "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run([*self.owner, self.bin_dir / "pg_ctl", "-D", self.data / "db", "-l", self.data / "log", "-w",
                        "start", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data}"], check=True, capture_output=True)

    def stop(self) -> None:
        """As a crash or a pulled cable: `immediate` ends every connection at once, without a clean shutdown."""
        subprocess.run([*self.owner, self.bin_dir / "pg_ctl", "-D", self.data / "db", "-m", "immediate", "stop"],
                       capture_output=True)


@pytest.fixture
def postgres_server():
    """A running PostgreSQL server of its own, stopped and removed afterwards."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install psycopg[binary] (the test extra)")
    server = PostgresServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    return postgres_server.url


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (scripts/test.sh: `-n 2 --dist loadgroup`), the tests that share a module-scoped fixture
    (a sweep run once for them all) go to one worker, so the fixture runs once."""
    for item in items:
        if any(defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
