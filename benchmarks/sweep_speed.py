"""Sweep speed: the default study end to end, and the pruned study against a full grid of the same space.

    python benchmarks/sweep_speed.py [--quick] [--no-grid] [--sampler-seeds 0,1,2,3] [--baseline OVERRIDE ...]
                                     [override ...]

Runs the real CLI in subprocesses, each sweep in a fresh temporary folder: `python -m ftharness -m
sweep=default` once per sampler seed (`hydra.sweeper.sampler.seed`: which points the study draws, and so its
best, moves with it), then the same space as a grid with no pruning: the learning rate at GRID_LRS (its log
interval has no grid of its own) x every rank x every target-module set. For each sweep: wall time, optimizer
steps, the time spent in optimizer steps (read back from each trial's metrics.jsonl: the tokens of each logged
step over its tokens/s, evaluations excluded) as a share of the wall time, and the best eval loss; for several
seeds also their mean and the worst seed's figures. `--baseline` adds the study once more per seed with these
overrides (e.g. `train.precision=fp32`), to compare against in the same run. Overrides apply to every sweep. The
preset's confirmation of its best points (`hydra.sweeper.confirm`) is left out: it is measured apart (README,
"After the study"), as issue 30's goal counts it.

The last line: `sweep_speed: study wall s = X, train share = Y, steps vs grid = Z, best vs grid-best = W (mean
over N seeds), worst = V` (the study's figures are means over the sampler seeds; steps and best eval loss are
taken over those of the grid; worst is the highest best-vs-grid-best of a seed; nan without the grid).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
GRID_LRS = "1e-5,1e-4,1e-3,1e-2"  # log-spaced over the study's interval(1e-5, 5e-2)
SPACE = ("optim.lr", "lora.r", "lora.target_modules")  # the keys the default study samples
STUDY_SETTINGS = ("hydra.sweeper.sampler", "hydra.sweeper.pruner", "hydra.sweeper.n_trials")  # not the grid's
QUICK = ["model=tiny", "tracker.mode=disabled", "data.train_size=48", "data.eval_size=8", "data.test_size=16",
         "train.max_steps=4", "train.eval_steps=2", "hydra.sweeper.n_trials=3", "lora.r=choice(8)",
         "lora.target_modules=choice(all-linear,attention)"]
QUICK_GRID_LRS = "1e-4,1e-2"
NO_CONFIRMATION = "hydra.sweeper.confirm.top_k=0"


def grid_overrides(lrs: str) -> list:
    """The default study's space as a grid without pruning: its sampler's and pruner's options removed (those of
    sweeps/default.yaml), every point run (n_trials above the grid's size)."""
    preset = OmegaConf.load(REPO / "sweeps" / "default.yaml").hydra.sweeper
    removed = [f"~hydra.sweeper.{part}.options.{key}" for part in ("sampler", "pruner")
               for key in preset.get(part, {}).get("options", {})]
    return ["hydra.sweeper.sampler.name=grid", "hydra.sweeper.pruner.name=none", "hydra.sweeper.pruner.warmup=null",
            NO_CONFIRMATION, *removed, "hydra.sweeper.n_trials=1000", f"optim.lr=choice({lrs})"]


def cli_env() -> dict:
    """The environment of a CLI run in another folder: this checkout's ftharness first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_sweep(name: str, overrides, folder: Path, preset: str = "default") -> dict:
    """Run one sweep of a preset through the CLI in `folder`; its wall time and its trials' summaries and step
    times."""
    command = [sys.executable, "-m", "ftharness", "-m", f"sweep={preset}", f"name={name}", *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=cli_env(), capture_output=True, text=True)
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
    completed = summary["status"] == "completed"  # a pruned trial's last eval loss is no result
    return {"status": summary["status"], "steps": summary.get("steps", 0), "step_s": step_seconds,
            "eval_loss": summary["after"]["eval_loss"] if completed else None, "params": summary.get("params", {})}


def figures(sweep: dict) -> dict:
    trials = sweep["trials"]
    finished = [t for t in trials if t["eval_loss"] is not None and math.isfinite(t["eval_loss"])]
    best = min(finished, key=lambda t: t["eval_loss"], default=None)
    counts = {status: sum(t["status"] == status for t in trials)
              for status in ("completed", "pruned", "diverged", "failed")}
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


def summarise(studies: list) -> tuple:
    """(mean, worst) of several sampler seeds' studies: the mean of every figure, and the seed whose best eval
    loss is highest (its steps, wall time and best trial as they were)."""
    numeric = ("steps", "wall_s", "step_s", "train_share", "best")
    mean = {key: statistics.fmean(s[key] for s in studies) for key in numeric}
    worst = max(studies, key=lambda s: s["best"] if math.isfinite(s["best"]) else math.inf)
    return {**mean, "trials": "", "best_params": ""}, worst


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
    parser.add_argument("--sampler-seeds", default=None, metavar="S,S,...",
                        help="run the study once per sampler seed (default: the preset's own seed)")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="OVERRIDE",
                        help="also run the study with these overrides, e.g. train.precision=fp32")
    parser.add_argument("overrides", nargs="*", help="config overrides for every sweep")
    args = parser.parse_args()
    common = (QUICK if args.quick else []) + args.overrides
    grid = grid_overrides(QUICK_GRID_LRS if args.quick else GRID_LRS)
    seeds = [int(s) for s in args.sampler_seeds.split(",")] if args.sampler_seeds else [None]
    plan, study_labels = {}, []
    for seed in seeds:
        label, suffix, seeded = ("study", "", []) if seed is None else \
            (f"seed {seed}", f"-s{seed}", [f"hydra.sweeper.sampler.seed={seed}"])
        plan[label] = (f"default-study{suffix}", [*common, *seeded, NO_CONFIRMATION])
        study_labels.append(label)
        if args.baseline:
            plan[f"{label}, baseline"] = (f"default-study-baseline{suffix}",
                                          [*common, *seeded, NO_CONFIRMATION, *args.baseline])
    if not args.no_grid:  # the study's own sampler and pruner settings do not apply to the grid
        trial_overrides = [o for o in common if not o.lstrip("+~").startswith(STUDY_SETTINGS)]
        plan["full grid, no pruning"] = ("default-grid", [*trial_overrides, *grid])
    columns = {}
    for label, (name, overrides) in plan.items():
        with tempfile.TemporaryDirectory(prefix="sweep_speed-") as folder:
            columns[label] = figures(run_sweep(name, overrides, Path(folder)))
            print(f"{label}: {columns[label]['steps']} steps, best {columns[label]['best']:.4f}, "
                  f"{columns[label]['wall_s']:.0f} s", file=sys.stderr)
    grid_figures = columns.pop("full grid, no pruning", None)
    studies = [columns[label] for label in study_labels]
    mean, worst = summarise(studies)
    if len(studies) > 1:
        columns.update({f"mean of {len(studies)} seeds": mean, "worst seed": worst})
    if grid_figures:
        columns["full grid, no pruning"] = grid_figures
    print(f"sweeps: sweep=default {' '.join(common)}; grid: {' '.join(grid)}\n")
    print(table(columns))
    steps_ratio = mean["steps"] / grid_figures["steps"] if grid_figures else math.nan
    best_ratios = [s["best"] / grid_figures["best"] if grid_figures else math.nan for s in studies]
    print(f"\nsweep_speed: study wall s = {mean['wall_s']:.0f}, train share = {mean['train_share']:.2f}, "
          f"steps vs grid = {steps_ratio:.2f}, best vs grid-best = {statistics.fmean(best_ratios):.3f} "
          f"(mean over {len(studies)} seeds), worst = {max(best_ratios):.3f}")


if __name__ == "__main__":
    main()
