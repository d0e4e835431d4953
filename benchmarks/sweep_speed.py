"""Sweep speed: the default study end to end, and the pruned TPE study against a full grid of the same space.

    python benchmarks/sweep_speed.py [--quick] [--no-grid] [--baseline OVERRIDE ...] [override ...]

Runs the real CLI in subprocesses, each sweep in a fresh temporary folder: `python -m ftharness -m
sweep=default` (8 TPE trials, median pruning), then the same space as a grid with no pruning: the learning
rate at GRID_LRS (its log interval has no grid of its own) x every rank x every target-module set. For each:
wall time, optimizer steps, the time spent in optimizer steps (read back from each trial's metrics.jsonl:
the tokens of each logged step over its tokens/s, evaluations excluded) as a share of the wall time, and the
best eval loss. `--baseline` adds the study once more with these overrides (e.g. `train.precision=fp32`),
to compare against in the same run. Overrides apply to every sweep.

The last line: `sweep_speed: study wall s = X, train share = Y, steps vs grid = Z, best vs grid-best = W`
(steps and best eval loss of the study over those of the grid; nan without the grid).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID_LRS = "1e-5,1e-4,1e-3,1e-2"  # log-spaced over the study's interval(1e-5, 5e-2)
SPACE = ("optim.lr", "lora.r", "lora.target_modules")  # the keys the default study samples
QUICK = ["model=tiny", "tracker.mode=disabled", "data.train_size=48", "data.eval_size=8", "data.test_size=16",
         "train.max_steps=4", "train.eval_steps=2", "hydra.sweeper.n_trials=3", "lora.r=choice(8)",
         "lora.target_modules=choice(all-linear,attention)"]
QUICK_GRID_LRS = "1e-4,1e-2"


def run_sweep(name: str, overrides, folder: Path) -> dict:
    """Run one sweep through the CLI in `folder`; its wall time and its trials' summaries and step times."""
    command = [sys.executable, "-m", "ftharness", "-m", "sweep=default", f"name={name}", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"sweep_speed: `{' '.join(command[1:])}` failed:\n{done.stderr[-4000:]}")
    trials = [_trial(summary) for summary in sorted((folder / "outputs" / "multirun" / name).glob("*/*/summary.json"))]
    return {"name": name, "wall_s": wall, "trials": trials}


def _trial(summary_file: Path) -> dict:
    summary = json.loads(summary_file.read_text())
    metrics = summary_file.with_name("metrics.jsonl")
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    step_seconds, tokens = 0.0, 0
    for record in records:
        if record.get("kind") == "train":
            step_seconds += (record["tokens_seen"] - tokens) / record["tokens_per_s"] if record["tokens_per_s"] else 0.0
            tokens = record["tokens_seen"]
    completed = summary["status"] == "completed"
    return {"status": summary["status"], "steps": summary.get("steps", 0), "step_s": step_seconds,
            "eval_loss": summary["after"]["eval_loss"] if completed else None, "params": summary.get("params", {})}


def figures(sweep: dict) -> dict:
    trials = sweep["trials"]
    finished = [t for t in trials if t["eval_loss"] is not None and math.isfinite(t["eval_loss"])]
    best = min(finished, key=lambda t: t["eval_loss"], default=None)
    counts = {status: sum(t["status"] == status for t in trials) for status in ("completed", "pruned", "diverged", "failed")}
    step_s = sum(t["step_s"] for t in trials)
    return {"trials": " / ".join(str(n) for n in counts.values()), "steps": sum(t["steps"] for t in trials),
            "wall_s": sweep["wall_s"], "step_s": step_s, "train_share": step_s / sweep["wall_s"],
            "best": best["eval_loss"] if best else math.nan,
            "best_params": ", ".join(f"{k}={_short(best['params'][k])}" for k in SPACE) if best else "—"}


def _short(value: str) -> str:
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


def table(columns: dict) -> str:
    rows = [("trials completed / pruned / diverged / failed", "trials", None), ("optimizer steps", "steps", 0),
            ("wall time s", "wall_s", 1), ("time in optimizer steps s", "step_s", 1),
            ("share of wall time in optimizer steps", "train_share", 3), ("best eval_loss", "best", 4),
            ("best trial", "best_params", None)]
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, key, digits in rows:
        cells = [f"{c[key]:,.{digits}f}" if digits is not None else str(c[key]) for c in columns.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 3 trials, a 4-point grid: for tests")
    parser.add_argument("--no-grid", action="store_true", help="skip the grid (the longest part)")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="OVERRIDE",
                        help="also run the study with these overrides, e.g. train.precision=fp32")
    parser.add_argument("overrides", nargs="*", help="config overrides for every sweep")
    args = parser.parse_args()
    common = (QUICK if args.quick else []) + args.overrides
    grid = ["hydra.sweeper.sampler.name=grid", "~hydra.sweeper.sampler.options.n_startup_trials",
            "hydra.sweeper.pruner.name=none", "~hydra.sweeper.pruner.options.n_startup_trials",
            "~hydra.sweeper.pruner.options.n_warmup_steps", "hydra.sweeper.n_trials=1000",
            f"optim.lr=choice({QUICK_GRID_LRS if args.quick else GRID_LRS})"]
    plan = {"TPE study, pruned": ("default-study", common)}
    if args.baseline:
        plan["study, " + " ".join(args.baseline)] = ("default-study-baseline", [*common, *args.baseline])
    if not args.no_grid:
        plan["full grid, no pruning"] = ("default-grid", [*common, *grid])
    columns = {}
    for label, (name, overrides) in plan.items():
        with tempfile.TemporaryDirectory(prefix="sweep_speed-") as folder:
            columns[label] = figures(run_sweep(name, overrides, Path(folder)))
    study = columns["TPE study, pruned"]
    grid_figures = columns.get("full grid, no pruning")
    print(f"sweeps: sweep=default {' '.join(common)}; grid: {' '.join(grid)}\n")
    print(table(columns))
    steps_ratio = study["steps"] / grid_figures["steps"] if grid_figures else math.nan
    best_ratio = study["best"] / grid_figures["best"] if grid_figures else math.nan
    print(f"\nsweep_speed: study wall s = {study['wall_s']:.0f}, train share = {study['train_share']:.2f}, "
          f"steps vs grid = {steps_ratio:.2f}, best vs grid-best = {best_ratio:.3f}")


if __name__ == "__main__":
    main()
