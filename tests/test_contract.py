"""What crosses processes (ftharness/contract.py): summary.json as runs wrote it before the contract existed, the
status words, the environment variables."""

import ast
import json
import re
import subprocess

from conftest import FIXTURES, REPO, finished_job
from ftharness import contract
from ftharness.contract import Status, TrialAttr, TrialSummary
from ftharness.report.figures import FLAGGED
from ftharness.report.results import results_of
from ftharness.report.runs import load_runs
from ftharness.sweep.telling import job_outcome
from ftharness.ui.formatting import markdown_table
from ftharness.ui.tracking import FINISHED

# A plain grid written by the harness before the contract existed (tiny model, 4 steps): a completed job, two that
# failed validation, and one out of memory (injected), with its results table as that version printed it.
OLD_SWEEP = FIXTURES / "old_sweep"




def test_an_old_summary_reads_and_writes_back_to_the_same_json():
    for path in sorted(OLD_SWEEP.glob("*/summary.json")):
        summary = TrialSummary.read(path.parent)
        assert json.dumps(summary.as_dict(), indent=2) == path.read_text(), path
    trained, failed, oom = (TrialSummary.read(OLD_SWEEP / job) for job in ("0", "1", "2"))
    assert trained.status == Status.COMPLETED and trained.steps == 4 and trained.objective.metric == "eval_loss"
    assert trained.metric("train_loss") == trained.final_loss
    assert trained.metric("eval_loss") == trained.after["eval_loss"]
    assert failed.status == Status.FAILED and failed.reason.startswith("ConfigError: lora.r=0") and failed.steps is None
    assert oom.status == Status.OOM and oom.reason.startswith("out of memory at micro-batch 8") and oom.sequence_length


def test_an_old_sweep_folder_gives_the_table_it_gave():
    results = results_of(*load_runs(OLD_SWEEP))
    assert markdown_table(results.rows) == (OLD_SWEEP / "results.md").read_text()
    assert [run.state for run in results.runs] == [Status.COMPLETED, Status.FAILED, Status.OOM, Status.FAILED]


def test_fields_a_summary_does_not_know_are_kept():
    record = {"status": "completed", "run_name": "x", "params": {}, "added_later": {"a": 1}}
    assert TrialSummary.from_dict(record).as_dict()["added_later"] == {"a": 1}


def _status_words_outside_the_contract() -> list:
    words = {status.value for status in Status}
    found = []
    for path in [*(REPO / "ftharness").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]:
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in words:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    return found


def test_every_status_the_sweeper_and_the_report_know_comes_from_the_enum():
    assert _status_words_outside_the_contract() == []
    assert all(isinstance(status, Status) for status in FLAGGED | FINISHED)
    for run_dir in sorted(OLD_SWEEP.glob("[0-9]")):
        state, _, attrs = job_outcome(finished_job(run_dir), ["eval_loss"])
        assert type(attrs[TrialAttr.STATUS]) is Status, run_dir
    assert all(type(run.state) is Status for run in load_runs(OLD_SWEEP)[0])


def test_every_environment_variable_is_named_once_in_the_contract():
    defined = {value for name, value in vars(contract).items() if name.endswith("_ENV")}
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    used = {}
    for name in files:
        path = REPO / name
        if path.suffix in (".py", ".yaml", ".sh", ".md") and path.is_file():
            for variable in re.findall(r"FTHARNESS_[A-Z_]+", path.read_text(errors="replace")):
                used.setdefault(variable, set()).add(name)
    assert set(used) <= defined, {v: files for v, files in used.items() if v not in defined}
    spelled = {v: sorted(f for f in files if f.startswith("ftharness/") and f != "ftharness/contract.py")
               for v, files in used.items()}
    assert not any(spelled.values()), spelled  # the modules use the contract's names, never the words
