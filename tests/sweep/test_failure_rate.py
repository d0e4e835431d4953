"""A study that passes hydra.sweeper.max_failure_rate stops with one line, after writing what it has: the results
table, best.json and the report, as a sweep that ended would."""

from conftest import TINY, run_cli


def test_too_many_failed_trials_stop_the_study_after_its_table_and_report(tmp_path):
    result = run_cli("-m", *TINY, "eval.max_new_tokens=0", "hydra/sweeper=ftharness", "hydra.sweeper.sampler.name=grid",
                     "lora.r=choice(0,2)", "hydra.sweeper.max_failure_rate=0.1", cwd=tmp_path)
    assert result.returncode == 1
    assert "failed trials exceed max_failure_rate=0.1 of 2; last: ConfigError: lora.r=0" in result.stderr
    assert "Traceback" not in result.stderr
    sweep_dir, = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    assert all((sweep_dir / name).is_file() for name in ("results.md", "best.json", "report.html"))
    assert "| failed | ConfigError: lora.r=0" in result.stdout
