"""Asks spent on points that cannot fit: a TPE study told them as `wont_fit` with a constraint, against one that
learns nothing from them (the way an `oom` trial used to be told: FAIL, which TPE ignores).

    python benchmarks/feasibility.py [--quick] [--sampler-seeds 0,1,2,3] [--trials 16] [--budget-gb 0.9]

Runs the real CLI on the tiny model in fresh temporary folders: a TPE study over the micro-batch size (1 .. 64 at
2048 tokens: the estimate grows with it) and the learning rate, `hydra.sweeper.memory_budget_gb` set so that the
three largest batch sizes are over it (3 of 7 values). The arm `constraint` is the sweeper as shipped; the arm
`no constraint` runs the same sweeper with its `wont_fit` trials told FAIL and without a constraint (patched in
its process only: no setting of the harness turns the learning off). Per sampler seed, each arm counts the asks over
the budget (each costs ~0 s and is asked again, up to n_trials of them) and the points trained (n_trials, fewer
once the study has asked n_trials points over the budget); random sampling would ask trials x 3/4 of them (a share
3/7 of all asks).

The last line: `feasibility: wont_fit asks with constraint = X, without = Y; trained with = A, without = B (mean over
N seeds of T trials)`. Measured on a 2-core EPYC, seeds 0-3: 6.75 asks over the budget with the constraint (16
points trained in every study), 18.25 without (12.25 trained: three studies spent all 16 extra asks); random: 12.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "tracker.mode=disabled", "data.train_size=48", "data.eval_size=8", "data.test_size=16",
        "train.max_steps=4", "train.eval_steps=0", "eval.max_new_tokens=0", "train.precision=fp32"]
SPACE = ["train.per_device_batch_size=choice(1,2,4,8,16,32,64)", "optim.lr=tag(log,interval(1e-4,1e-2))",
         "data.max_length=2048"]
OVER_BUDGET_SHARE = 3 / 7  # batch sizes 16, 32, 64 at 0.9 GB (estimates ~1.0, 1.5, 2.6 GB; 8: ~0.7 GB)
RANDOM_WONT_FIT_PER_TRIAL = OVER_BUDGET_SHARE / (1 - OVER_BUDGET_SHARE)  # asks over budget per trained point
# The arm without learning: the sweeper's wont_fit trials told as failed, with no constraint (the tell of an
# out-of-memory trial before constraints, whose FAIL TPE skips); those failures, up to 2 x n_trials of them, do not
# stop the sweep (max_failure_rate counts the failures of n_trials: at most 1).
NO_CONSTRAINT = """
import runpy, sys
import optuna
from optuna.trial import TrialState
import ftharness.sweep.loop as loop
import ftharness.sweep.telling as telling
loop.StudySweep._check_failure_rate = lambda self, study, budget: None
told = telling.tell_state
telling.tell_state = lambda study, trial, values, state: told(
    study, trial, values, TrialState.FAIL if trial.user_attrs.get("status") == "wont_fit" else state)
optuna.trial.Trial.set_constraint = lambda self, key, value: None
sys.argv = ["ftharness", *sys.argv[1:]]
runpy.run_module("ftharness", run_name="__main__")
"""


def run_study(arm: str, seed: int, trials: int, budget_gb: float, folder: Path) -> list:
    """The study's trial statuses in ask order."""
    overrides = ["-m", *TINY, *SPACE, "hydra/sweeper=ftharness", f"hydra.sweeper.n_trials={trials}",
                 f"hydra.sweeper.sampler.seed={seed}", "+hydra.sweeper.sampler.options.n_startup_trials=4",
                 f"hydra.sweeper.memory_budget_gb={budget_gb}", "name=feasibility"]
    prefix = [sys.executable, "-c", NO_CONSTRAINT] if arm == "no constraint" else [sys.executable, "-m", "ftharness"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([*prefix, *overrides], cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{arm}, seed {seed} failed:\n{result.stderr[-3000:]}")
    study = optuna.load_study(study_name="feasibility", storage=f"sqlite:///{folder}/outputs/studies/feasibility.db")
    return [t.user_attrs.get("status") for t in study.trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 6 trials: for tests")
    parser.add_argument("--sampler-seeds", default="0,1,2,3", metavar="S,S,...")
    parser.add_argument("--trials", type=int, default=16, help="the study's n_trials")
    parser.add_argument("--budget-gb", type=float, default=0.9, help="hydra.sweeper.memory_budget_gb")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.sampler_seeds.split(",")]
    trials = 6 if args.quick else args.trials
    counts = {"constraint": [], "no constraint": []}
    trained = {arm: [] for arm in counts}
    for seed in seeds:
        for arm, spent in counts.items():
            with tempfile.TemporaryDirectory(prefix="feasibility-") as folder:
                statuses = run_study(arm, seed, trials, args.budget_gb, Path(folder))
            spent.append(statuses.count("wont_fit"))
            trained[arm].append(len(statuses) - spent[-1])
            print(f"{arm}, seed {seed}: {spent[-1]} of {len(statuses)} asks over the budget", file=sys.stderr)
    print(f"\n| sampler seed | {' | '.join(map(str, seeds))} | mean |")
    print(f"|---|{'---|' * (len(seeds) + 1)}")
    for label, table in (("wont_fit asks", counts), ("points trained", trained)):
        for arm, values in table.items():
            print(f"| {label}, {arm} | {' | '.join(map(str, values))} | {statistics.mean(values):.2f} |")
    expected = RANDOM_WONT_FIT_PER_TRIAL * trials
    print(f"| wont_fit asks, random sampling (expected) | {' | '.join(['%.2f' % expected] * len(seeds))} | "
          f"{expected:.2f} |")
    mean = {arm: (statistics.mean(counts[arm]), statistics.mean(trained[arm])) for arm in counts}
    print(f"\nfeasibility: wont_fit asks with constraint = {mean['constraint'][0]:.2f}, without = "
          f"{mean['no constraint'][0]:.2f}; trained with = {mean['constraint'][1]:.2f}, without = "
          f"{mean['no constraint'][1]:.2f} (mean over {len(seeds)} seeds of {trials} trials)")


if __name__ == "__main__":
    main()
