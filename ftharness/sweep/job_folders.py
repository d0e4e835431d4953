"""The folders of a sweep's jobs, each claimed by one sweep process.

Hydra numbers a sweep's jobs from 0 in every process and names the sweep folder after the second the sweep started
(conf/config.yaml). Two sweeps of one study started in the same second, or given one `hydra.sweep.dir` (a shared
folder for several machines, docs/scaling-out.md), wrote their jobs into the same folders: each process then told its
trial the other one's summary.json (measured: a grid of 4 points, two processes, 3 folders; trials 0 and 1 both told
lr 4e-3's result, the 3e-3 point's lost). A process now claims a job's number by creating its folder, which one
process alone can do (mkdir is atomic on local disks and NFS alike), and passes over the numbers others hold.
Written by hand: Hydra's launchers take the first job number from the sweeper and create the folders themselves.
"""

from pathlib import Path

__all__ = ["claim_job_numbers"]


def claim_job_numbers(sweep_dir: Path, start: int, count: int) -> int:
    """The first of `count` consecutive job numbers, from `start` on, whose folders in `sweep_dir` this call created
    (a launcher numbers a batch's jobs consecutively). Folders that exist already belong to another process, or to
    an earlier run given the same folder: their numbers are passed over."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    first = start
    while True:
        claimed = []
        for number in range(first, first + count):
            try:
                (sweep_dir / str(number)).mkdir()
            except FileExistsError:
                break
            claimed.append(number)
        if len(claimed) == count:
            return first
        for number in claimed:  # empty, created just now: given back, the batch starts past the taken number
            (sweep_dir / str(number)).rmdir()
        first += len(claimed) + 1
