"""One trial per device: this machine's GPUs as a pool that the parallel jobs of a sweep lease from, and each
CPU worker's share of the cores.

The sweeper tells its jobs (ftharness/sweep/job_env.py) the pool (its own visible GPUs), how many
devices a trial takes and, when several run at once, their share of the CPU cores. A job leases free devices of the
pool for as long as it runs -- a lock file per device, per user and machine, so the jobs of several sweeps on
one machine share the pool too -- and sees only those, through CUDA_VISIBLE_DEVICES set before torch
initialises CUDA. A job finding every device taken waits for one. Parallel launchers reuse their worker
processes (joblib's loky): once CUDA is initialised in a worker its visible devices cannot change, so the
worker's next job waits for the same devices, and a worker that initialised CUDA unpinned is refused.
"""

import fcntl
import logging
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional

from ftharness.contract import DEVICES_ENV, DEVICES_PER_TRIAL_ENV, LOCKS_ENV, THREADS_ENV
from ftharness.sweep.optuna_objects import SweepConfigError
from ftharness.ui.formatting import number_of

log = logging.getLogger(__name__)

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU; reading it leaves CUDA uninitialised
WAIT_POLL_S = 1.0


class DeviceError(RuntimeError):
    """A trial that cannot be pinned to its devices."""


def visible_devices() -> List[str]:
    """The GPUs a sweep on this machine may use: CUDA_VISIBLE_DEVICES when set, else every NVIDIA GPU (counted
    without initialising CUDA, which would fix the visible devices of a job run in this process)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(len(list(NVIDIA_GPUS.iterdir())))] if NVIDIA_GPUS.is_dir() else []


def worker_threads(n_workers: int) -> int:
    """One worker's share of this process's cores when `n_workers` trials run at once."""
    return max(1, len(os.sched_getaffinity(0)) // max(n_workers, 1))


def device_env(devices_per_trial: int, n_jobs: int) -> Dict[str, str]:
    """What the jobs of a launcher on this machine need to share it (the sweeper sets it per job): the GPU pool,
    and each parallel worker's share of the CPU cores."""
    pool = visible_devices() if devices_per_trial else []
    if devices_per_trial > len(pool) > 0:
        raise SweepConfigError(f"hydra.sweeper.devices_per_trial={devices_per_trial}: this machine's pool "
                               f"has {number_of(len(pool), 'GPU')} ({','.join(pool)})")
    env = {THREADS_ENV: str(worker_threads(n_jobs))} if n_jobs > 1 else {}
    if pool:
        if n_jobs * devices_per_trial > len(pool):
            log.info("n_jobs=%d trials of %d GPU(s) on a pool of %d: the others wait for a free one",
                     n_jobs, devices_per_trial, len(pool))
        env.update({DEVICES_ENV: ",".join(pool), DEVICES_PER_TRIAL_ENV: str(devices_per_trial)})
    return env


def _lock_dir() -> Path:
    folder = Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / f"ftharness-devices-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _try_lock(device: str) -> Optional[IO]:
    """The device's lock file, held (released when closed or when this process dies), or None if taken."""
    file = open(_lock_dir() / f"{device.replace('/', '_')}.lock", "a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return file
    except BlockingIOError:
        file.close()
        return None


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _candidates(pool: List[str], wanted: int) -> Optional[List[str]]:
    """The devices this job must lease: any of the pool, unless CUDA already runs in this (reused) process."""
    if not _cuda_initialised():
        return None
    current = visible_devices()
    if len(current) != wanted or not set(current) <= set(pool):
        raise DeviceError(f"CUDA was initialised in this process with CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} before its trial was pinned: its devices "
                          f"cannot change now (pool {','.join(pool)}, {wanted} per trial)")
    return current


def _lease(pool: List[str], wanted: int, fixed: Optional[List[str]], stack: ExitStack) -> List[str]:
    """Lock `wanted` free devices of the pool (all or none at a time, so waiting jobs never deadlock)."""
    waited = False
    while True:
        held = []
        for device in fixed or pool:
            lock = _try_lock(device)
            if lock is not None:
                held.append((device, lock))
            if len(held) == wanted:
                for _, lock in held:
                    stack.callback(lock.close)
                return [device for device, _ in held]
        for _, lock in held:
            lock.close()
        if not waited:
            log.info("waiting for a free device of the pool %s", ",".join(pool))
            waited = True
        time.sleep(WAIT_POLL_S)


def share_cores(threads: int) -> None:
    """Limit this trial to `threads` CPU threads (torch's own, and OpenMP / MKL of libraries loaded later)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


@contextmanager
def device_lease() -> Iterator[Optional[List[str]]]:
    """Pin this job to its devices of the sweep's pool for as long as it runs; give its CPU workers their share
    of the cores. Yields the leased devices (None outside a sweep with a pool)."""
    if os.environ.get(THREADS_ENV):
        share_cores(int(os.environ[THREADS_ENV]))
    pool = [d for d in os.environ.get(DEVICES_ENV, "").split(",") if d]
    wanted = int(os.environ.get(DEVICES_PER_TRIAL_ENV) or 1)
    if not pool or wanted < 1:
        yield None
        return
    with ExitStack() as stack:
        devices = _lease(pool, wanted, _candidates(pool, wanted), stack)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        log.info("pinned to device(s) %s", ",".join(devices))
        yield devices
