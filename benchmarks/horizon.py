"""Horizon: does a study's winner hold at the budget the user trains with?

    python benchmarks/horizon.py [--quick] [--budget STEPS] [--sampler-seeds 0,1,2,3] [--noise-seeds N]
                                 [override ...]

On a real task (data=chitchat: human conversations, the loss on one side's turns), the space of the default study
less its target modules (learning rate x rank), three arms, each sweep through the real CLI in a fresh folder:
- **grid** at the target budget (`train.max_steps=BUDGET`, no pruning): the truth. Its best point runs again with
  `--noise-seeds` other seeds: the seed noise its best is known to.
- **proxy**: today's default study (sweeps/default.yaml: 12-step trials, successive halving), whose winner is then
  trained at the budget (`from_best=... train.max_steps=BUDGET`). Cost: its trials' steps and that run's.
- **budget-true**: sweeps/budget.yaml at the budget (every trial on the target run's schedule, stopped at rungs of
  1/27, 1/9 and 1/3 of it): its winner ran the whole budget, so it is the trained model. Cost: its trials' steps.
Each study runs once per sampler seed. Per arm and seed: the winner, its eval loss at the budget over the grid's
best, its cost in optimizer steps and in full runs (steps / budget). The last line:
`horizon: proxy winner at budget = X x grid-best, budget-true = Y x, cost = Z full runs` (means over the seeds; Z is
the budget-true study's cost, its winner's run included).

Time on this 2-core CPU, nothing else running (2026-12-06): the grid and its noise runs ~18 min (a 54-step run
~1.5 min), then per sampler seed ~7.5 min of proxy and ~11 min of budget-true study: ~1 h for seeds 0-1, ~1.6 h for
the default 0-3 (over the ~40 minutes aimed at; `--sampler-seeds 0,1` or `--budget 27` for less). Other processes
on the cores slow torch's threads by up to 10x. docs/sweeps.md has the measured table.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sweep_speed import cli_env, grid_overrides, run_sweep

SPACE = ("optim.lr", "lora.r")
TASK = ["data=chitchat", "data.max_length=128", "data.eval_size=32", "data.test_size=0",
        "train.per_device_batch_size=4", "lora.target_modules=all-linear", "tracker.mode=disabled"]
GRID_LRS = "1e-4,3e-4,1e-3,3e-3,1e-2"  # log-spaced over the default study's interval(1e-4, 2e-2), x rank 8 and 16
BUDGET = 54  # 216 chats of the 3,953: one epoch, so every trial's train loss is held out (the pruner's evidence)
QUICK = ["model=tiny", "tracker.mode=disabled", "data.train_size=48", "data.eval_size=8", "data.test_size=0",
         "train.per_device_batch_size=4", "lora.target_modules=all-linear", "lora.r=choice(8)",
         "hydra.sweeper.n_trials=4"]
QUICK_BUDGET, QUICK_PROXY_STEPS, QUICK_GRID_LRS = 9, 3, "1e-3,1e-2"


def winner(folder: Path, name: str) -> dict:
    """The sweep's best trial as best.json names it."""
    sweep_dir, = (folder / "outputs" / "multirun" / name).iterdir()
    return json.loads((sweep_dir / "best.json").read_text())["best"]


def train_at_budget(folder: Path, name: str, budget: int, *overrides: str) -> dict:
    """The sweep's best point trained as one run of `budget` steps: its summary.json."""
    sweep_dir, = (folder / "outputs" / "multirun" / name).iterdir()
    run_dir = folder / "at-budget" / "-".join([name, *overrides]).replace("=", "")
    command = [sys.executable, "-m", "ftharness", f"from_best={sweep_dir}", f"train.max_steps={budget}", *overrides,
               f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=folder, env=cli_env(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"horizon: `{' '.join(command[1:])}` failed:\n{done.stderr[-4000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def point(best: dict) -> str:
    return ", ".join(f"{key.split('.')[-1]}={_short(best['params'].get(key, '-'))}" for key in SPACE)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def study_steps(sweep: dict) -> int:
    return sum(trial["steps"] for trial in sweep["trials"])


def run_grid(folder: Path, common: list, budget: int, lrs: str, noise_seeds: int) -> dict:
    """The grid at the budget, and its best point with `noise_seeds` other seeds."""
    sweep = run_sweep("grid", [*common, f"train.max_steps={budget}", *grid_overrides(lrs)], folder)
    best = winner(folder, "grid")
    values = [best["values"]["eval_loss"]]
    values += [train_at_budget(folder, "grid", budget, f"seed={42 + s}")["after"]["eval_loss"]
               for s in range(1, noise_seeds + 1)]
    return {"point": point(best), "values": values, "steps": study_steps(sweep)}


def run_proxy(folder: Path, common: list, budget: int, seeded: list, proxy_steps: list) -> dict:
    """The default study at its own horizon, then its winner trained at the budget."""
    sweep = run_sweep("proxy", [*common, *seeded, *proxy_steps, "hydra.sweeper.confirm.top_k=0"], folder)
    best = winner(folder, "proxy")
    at_budget = train_at_budget(folder, "proxy", budget)
    return {"point": point(best), "eval_loss": at_budget["after"]["eval_loss"],
            "steps": study_steps(sweep) + at_budget["steps"]}


def run_budget_true(folder: Path, common: list, budget: int, seeded: list) -> dict:
    """The budget-true study: its winner ran the whole budget."""
    sweep = run_sweep("budget", [*common, *seeded, f"train.max_steps={budget}"], folder, preset="budget")
    best = winner(folder, "budget")
    return {"point": point(best), "eval_loss": best["values"]["eval_loss"], "steps": study_steps(sweep)}


def table(grid: dict, arms: dict, budget: int) -> str:
    grid_best = grid["values"][0]
    lines = ["| arm | sampler seed | winner | eval loss at budget | x grid-best | optimizer steps | full runs |",
             "|---|---|---|---|---|---|---|"]
    noise = f" (seeds: {min(grid['values']):.4f}..{max(grid['values']):.4f})" if len(grid["values"]) > 1 else ""
    lines.append(f"| grid at {budget} steps | - | {grid['point']} | {grid_best:.4f}{noise} | 1.000 | "
                 f"{grid['steps']:,} | {grid['steps'] / budget:.1f} |")
    for arm, runs in arms.items():
        for seed, run in runs.items():
            lines.append(f"| {arm} | {seed} | {run['point']} | {run['eval_loss']:.4f} | "
                         f"{run['eval_loss'] / grid_best:.3f} | {run['steps']:,} | {run['steps'] / budget:.1f} |")
        values = list(runs.values())
        lines.append(f"| {arm}, mean | | | {statistics.fmean(r['eval_loss'] for r in values):.4f} | "
                     f"{statistics.fmean(r['eval_loss'] for r in values) / grid_best:.3f} | "
                     f"{statistics.fmean(r['steps'] for r in values):,.0f} | "
                     f"{statistics.fmean(r['steps'] for r in values) / budget:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model on the embedded task: for tests")
    parser.add_argument("--budget", type=int, default=None, help=f"the target run's optimizer steps ({BUDGET})")
    parser.add_argument("--sampler-seeds", default="0,1,2,3", metavar="S,S,...")
    parser.add_argument("--noise-seeds", type=int, default=None, help="other seeds of the grid's best point (2)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every sweep")
    args = parser.parse_args()
    common = [*(QUICK if args.quick else TASK), *args.overrides]
    budget = args.budget or (QUICK_BUDGET if args.quick else BUDGET)
    noise_seeds = args.noise_seeds if args.noise_seeds is not None else 0 if args.quick else 2
    proxy_steps = [f"train.max_steps={QUICK_PROXY_STEPS}"] if args.quick else []
    with tempfile.TemporaryDirectory(prefix="horizon-") as folder:
        grid = run_grid(Path(folder), common, budget, QUICK_GRID_LRS if args.quick else GRID_LRS, noise_seeds)
    print(f"grid: best {grid['values'][0]:.4f}, {grid['steps']} steps", file=sys.stderr)
    arms = {"proxy (12-step study)" if not args.quick else "proxy": {}, "budget-true": {}}
    for seed in (int(s) for s in args.sampler_seeds.split(",")):
        seeded = [f"hydra.sweeper.sampler.seed={seed}"]
        for arm, run in zip(arms, (run_proxy, run_budget_true)):
            with tempfile.TemporaryDirectory(prefix="horizon-") as folder:
                extra = (proxy_steps,) if run is run_proxy else ()
                arms[arm][seed] = run(Path(folder), common, budget, seeded, *extra)
            print(f"{arm}, seed {seed}: {arms[arm][seed]}", file=sys.stderr)
    print(f"task: {' '.join(common)}; budget {budget} steps\n")
    print(table(grid, arms, budget))
    proxy, budget_true = (list(runs.values()) for runs in arms.values())
    grid_best = grid["values"][0]
    print(f"\nhorizon: proxy winner at budget = {statistics.fmean(r['eval_loss'] for r in proxy) / grid_best:.3f} x "
          f"grid-best, budget-true = {statistics.fmean(r['eval_loss'] for r in budget_true) / grid_best:.3f} x, "
          f"cost = {statistics.fmean(r['steps'] for r in budget_true) / budget:.1f} full runs")


if __name__ == "__main__":
    main()
