"""Each job folder of a sweep belongs to one sweep process, and a trial records the folder its job really writes
(ftharness/sweep/job_folders.py): checked against Hydra's own launcher on the plain app's config."""

from pathlib import Path
from typing import List

import pytest
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext, RunMode

from conftest import FIXTURES
from ftharness.sweep.job_folders import JobFolders

BATCH = [["x=1"], ["x=2", "y=0.5"]]


@pytest.fixture
def sweep(tmp_path):
    """(JobFolders, launch): the plain app's sweep config in tmp_path/sweep with the given subdir, and Hydra's basic
    launcher's job folders for a batch from a first job number."""
    def make(subdir: str):
        loader = GlobalHydra.instance().config_loader()
        config = loader.load_configuration("config", [f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                                      f"hydra.sweep.subdir={subdir}",
                                                      # the test process's logging left as it is
                                                      "hydra/hydra_logging=none", "hydra/job_logging=none"],
                                           RunMode.MULTIRUN)
        HydraConfig.instance().set_config(config)  # as in a sweep's process
        launcher = BasicLauncher()
        launcher.setup(hydra_context=HydraContext(loader, Callbacks()), task_function=lambda cfg: None, config=config)

        def launch(batch: List[List[str]], start: int) -> List[Path]:
            return [Path(job.hydra_cfg.hydra.runtime.output_dir) for job in launcher.launch(batch, start)]

        return JobFolders(config, lambda overrides: loader.load_sweep_config(config, overrides)), launch

    before = HydraConfig.instance().cfg
    with initialize_config_dir(config_dir=str(FIXTURES / "plain_app"), version_base=None):
        yield make
    HydraConfig.instance().cfg = before


def test_a_batch_claims_consecutive_numbered_folders_past_those_that_exist(sweep, tmp_path):
    folders, launch = sweep("${hydra.job.num}")
    assert folders.claim(BATCH, 0)[0] == 0
    assert folders.claim(BATCH, 0)[0] == 2  # 0 and 1 are taken: another process's, or this one's
    (tmp_path / "sweep" / "5").mkdir()  # another process's job
    start, claimed = folders.claim(BATCH, 4)
    assert start == 6  # 4 alone is free: given back, the batch starts after 5
    assert claimed == launch(BATCH, start) == [tmp_path / "sweep" / "6", tmp_path / "sweep" / "7"]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0", "1", "2", "3", "5", "6", "7"]


def test_two_claims_from_the_same_number_never_share_a_folder(sweep):
    folders, _ = sweep("${hydra.job.num}")
    (first, _), (second, _) = folders.claim(BATCH, 0), folders.claim(BATCH, 0)
    assert {first, first + 1}.isdisjoint({second, second + 1})


@pytest.mark.parametrize("subdir", ["${hydra.job.override_dirname}",
                                    "run_${hydra.job.num}/${hydra:job.override_dirname}"])
def test_a_trial_records_the_folder_of_an_apps_own_subdir_and_no_other_is_made(sweep, tmp_path, subdir):
    folders, launch = sweep(subdir)
    start, claimed = folders.claim(BATCH, 3)
    assert claimed == launch(BATCH, start)
    assert claimed[1].name == "x=2,y=0.5"
    made = {p for p in (tmp_path / "sweep").rglob("*") if p.is_dir() and not p.name.startswith(".")}
    assert made == {*claimed, *(folder.parent for folder in claimed)} - {tmp_path / "sweep"}
