"""The folders of a sweep's jobs: where the launcher will put each one, each claimed by one sweep process.

Hydra numbers a sweep's jobs from 0 in every process and names the sweep folder after the second the sweep started
(conf/config.yaml). Two sweeps of one study started in the same second, or given one `hydra.sweep.dir` (a shared
folder for several machines, docs/scaling-out.md), wrote their jobs into the same folders: each process then told its
trial the other one's summary.json (measured: a grid of 4 points, two processes, 3 folders; trials 0 and 1 both told
lr 4e-3's result, the 3e-3 point's lost). A process now claims a job's number by creating its folder, which one
process alone can do (mkdir is atomic on local disks and NFS alike), and passes over the numbers others hold.

A job's folder is `hydra.sweep.dir / hydra.sweep.subdir`, the subdir resolved in the job's own config (its overrides,
its number): `${hydra.job.num}` by default, but an app may name its jobs' folders otherwise (after their overrides,
`${hydra.job.override_dirname}`); a trial records the folder its job will really write. Only a subdir that holds the
job's number can be claimed: another number gives another folder.
Written by hand: Hydra's launchers take the first job number from the sweeper and create the folders themselves.
"""

from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, read_write

__all__ = ["JobFolders"]

NUMBER_KEY = "hydra.job.num"
DEFAULT_SUBDIR = "${hydra.job.num}"  # conf/config.yaml's, and Hydra's


class JobFolders:
    """Where a sweep's launcher puts each job (as hydra.core.utils.run_job resolves it), and the claiming of them."""

    def __init__(self, config: DictConfig, compose: Callable[[Sequence[str]], DictConfig]):
        """`config`: the sweep's; `compose`: a job's config from its overrides (the config loader's sweep config)."""
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"])
        self.numbered = NUMBER_KEY in self.subdir
        self.compose = compose

    def claim(self, batch: List[List[str]], start: int) -> Tuple[int, List[Path]]:
        """The first job number of a batch launched from `start` on (a launcher numbers a batch's jobs
        consecutively) and its jobs' folders, created by this call where they are numbered. Numbered folders that
        exist already belong to another process, or to an earlier run given the same folder: their numbers are
        passed over. Folders not named after the number are Hydra's to create, as without this sweeper."""
        namers = [self._namer(overrides) for overrides in batch]
        if not self.numbered:
            return start, [name(start + i) for i, name in enumerate(namers)]
        first = start
        while True:
            claimed: List[Path] = []
            for i, name in enumerate(namers):
                folder = name(first + i)
                try:
                    folder.mkdir(parents=True)
                except FileExistsError:
                    break
                claimed.append(folder)
            if len(claimed) == len(batch):
                return first, claimed
            for folder in claimed:  # empty, created just now: given back, the batch starts past the taken number
                folder.rmdir()
            first += len(claimed) + 1

    def _namer(self, overrides: Sequence[str]) -> Callable[[int], Path]:
        """A job's folder by its number, for a job of these overrides. The default subdir needs no composing (0.1 s
        a job for ftharness's config)."""
        if self.subdir == DEFAULT_SUBDIR:
            return lambda number: self.sweep_dir / str(number)
        job_config = self.compose(list(overrides))

        def folder(number: int) -> Path:
            with read_write(job_config.hydra):  # made read-only by set_config below
                job_config.hydra.job.id = job_config.hydra.job.num = number
            sweeper_config = HydraConfig.instance().cfg
            HydraConfig.instance().set_config(job_config)  # for `${hydra:...}` in the subdir, as run_job does
            try:
                return self.sweep_dir / str(OmegaConf.select(job_config, "hydra.sweep.subdir"))
            finally:
                HydraConfig.instance().cfg = sweeper_config

        return folder
