"""One trial per device (ftharness/sweep/devices.py) on a fake pool of GPU ids, and the CPU workers' share of the
cores."""

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from ftharness.sweep import devices
from ftharness.sweep.devices import (
    DEVICES_ENV,
    DEVICES_PER_TRIAL_ENV,
    LOCKS_ENV,
    THREADS_ENV,
    DeviceError,
    device_env,
    device_lease,
)
from ftharness.sweep.optuna_objects import SweepConfigError

POOL = "7,9"  # fake GPU ids: nothing here touches CUDA


def _job(env: dict, queue) -> None:
    """A job as the sweeper starts it: the per-job environment, then the lease around its work."""
    os.environ.update(env)
    with device_lease() as leased:
        start = time.monotonic()
        time.sleep(0.5)
        queue.put((os.environ["CUDA_VISIBLE_DEVICES"], leased, start, time.monotonic()))


def test_four_parallel_jobs_on_a_two_device_pool_each_see_one_device_never_two_at_once(tmp_path):
    env = {DEVICES_ENV: POOL, DEVICES_PER_TRIAL_ENV: "1", LOCKS_ENV: str(tmp_path)}
    context = multiprocessing.get_context("spawn")  # fresh processes, as joblib's workers
    queue = context.Queue()
    jobs = [context.Process(target=_job, args=(env, queue)) for _ in range(4)]
    for job in jobs:
        job.start()
    seen = [queue.get(timeout=60) for _ in jobs]
    for job in jobs:
        job.join()
    assert all(visible in ("7", "9") and leased == [visible] for visible, leased, _, _ in seen)
    for device in ("7", "9"):
        spans = sorted((start, end) for visible, _, start, end in seen if visible == device)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_a_reused_worker_whose_cuda_runs_keeps_its_device_and_an_unpinned_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_cuda_initialised", lambda: True)
    monkeypatch.setenv(DEVICES_ENV, POOL)
    monkeypatch.setenv(LOCKS_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "9")
    with device_lease() as leased:
        assert leased == ["9"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(DeviceError, match="before its trial was pinned"):
        with device_lease():
            pass


def test_two_cpu_workers_each_get_half_the_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU
    cores = len(os.sched_getaffinity(0))
    env = device_env(devices_per_trial=1, n_jobs=2)
    assert env == {THREADS_ENV: str(max(1, cores // 2))}
    code = ("from ftharness.sweep.devices import device_lease\nimport torch\n"
            "with device_lease(): print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, THREADS_ENV: "1"}, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["1"]


def test_the_sweeper_announces_the_pool_and_refuses_a_trial_larger_than_it(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", POOL)
    env = device_env(devices_per_trial=1, n_jobs=4)
    assert env[DEVICES_ENV] == POOL and env[DEVICES_PER_TRIAL_ENV] == "1"
    assert device_env(devices_per_trial=0, n_jobs=1) == {}  # no pinning, no share
    with pytest.raises(SweepConfigError, match="devices_per_trial=3: this machine's pool has 2 GPU"):
        device_env(devices_per_trial=3, n_jobs=1)
