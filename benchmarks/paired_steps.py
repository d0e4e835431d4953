"""Settings compared step for step: trials of each setting interleaved in one process, on one loaded base.

    python benchmarks/paired_steps.py [--quick] [--rounds 4] [--steps 8] [--skip 2] SETTING [SETTING ...]

A SETTING is one quoted argument of space-separated overrides ('' for the defaults), e.g.
`'' 'train.share_prefix=false' 'train.compile=true'`. Each trial is the default study's (sweeps/default.yaml:
its batches, 32 eval rows, 100 test questions; `--steps` optimizer steps, eval loss before and after only) and runs
through `ftharness.trial.run_trial`, as in a sweep. The seconds a step are those of the steps after the first
`--skip` of a trial (their first steps pay for warm-up and, with `train.compile`, for compiling; a compile's seconds
are shown apart).

A shared machine's speed drifts (the 2-core one these figures came from: up to 30 % within minutes), so trials far
apart in time compare badly: each round runs one trial of every setting, in reversed order every other round, and
each setting's ratio to the first is the median of the ratios within each round, shown with their range (table and
last line give it to the same 2 places).

The last line, per setting after the first: `paired_steps: B/A = X.XXx (a-b per round)`.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from ftharness.ui.console import quiet_library_notices
from trial_speed import QUICK, STUDY_TRIAL, compose


def _now() -> float:
    """The time once the GPU, if any, has finished what it was given (its work runs behind the host's)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(TrainerCallback):
    """The wall time of each optimizer step after the first `skip`."""

    def __init__(self, skip: int):
        self.skip, self.seconds, self._start = skip, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = _now()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.skip:
            self.seconds.append(_now() - self._start)


def run_round(settings: list, configs: list, order: list, scratch: Path, skip: int, results: dict) -> None:
    from ftharness.trial.recipe import run_trial

    for index in order:
        timer = StepTimer(skip)
        run_dir = scratch / f"{len(results[index])}-{index}"
        summary = run_trial(configs[index], run_dir, run_dir.name, {}, extra_callbacks=[timer])
        if not timer.seconds:
            ended = f"{summary.status}: {summary.reason}" if summary.reason else summary.status
            raise SystemExit(f"{settings[index] or '(defaults)'}: the trial ended ({ended}) at step {summary.steps}, "
                             f"not past --skip {skip}")
        step = statistics.fmean(timer.seconds)
        results[index].append({"step": step, "loss": summary.final_loss, "compile": summary.compile_time_s or 0.0})
        print(f"  {settings[index] or '(defaults)'}: {step:.3f} s a step", flush=True)


def _figure(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def table(settings: list, results: dict) -> list:
    first = [run["step"] for run in results[0]]
    lines = ["| setting | s a step (median) | each round | / first (median of rounds) | range | compile s | "
             "final train loss |", "|---|---|---|---|---|---|---|"]
    last = []
    for index, setting in enumerate(settings):
        steps = [run["step"] for run in results[index]]
        ratios = [mine / theirs for mine, theirs in zip(steps, first)]
        ratio, low, high = statistics.median(ratios), min(ratios), max(ratios)
        compiled = max(run["compile"] for run in results[index])
        lines.append(f"| {setting or '(defaults)'} | {statistics.median(steps):.3f} | "
                     f"{', '.join(f'{s:.3f}' for s in steps)} | {ratio:.2f} | {low:.2f}-{high:.2f} | {compiled:.1f} | "
                     f"{_figure(results[index][-1]['loss'])} |")
        if index:
            last.append(f"paired_steps: {setting}/{settings[0] or '(defaults)'} = {ratio:.2f}x "
                        f"({low:.2f}-{high:.2f} per round)")
    return lines + [""] + last


def main() -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 2 rounds of 3 steps: for tests")
    parser.add_argument("--rounds", type=int, default=4, help="trials of each setting")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps a trial")
    parser.add_argument("--skip", type=int, default=2, help="steps of each trial left out of its time")
    parser.add_argument("settings", nargs="+", help="quoted, space-separated overrides per setting")
    args = parser.parse_args()
    if len(args.settings) < 2:
        parser.error("give at least two settings to compare")
    if args.steps <= args.skip:
        parser.error(f"--steps {args.steps} leaves no step to time after --skip {args.skip}")
    rounds, steps, skip = (2, 3, 1) if args.quick else (args.rounds, args.steps, args.skip)
    base = [*(QUICK if args.quick else STUDY_TRIAL), "train.eval_steps=0", f"train.max_steps={steps}",
            "tracker.mode=disabled"]
    configs = [compose([*base, *setting.split()]) for setting in args.settings]  # a bad override fails here
    results = {index: [] for index in range(len(configs))}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(rounds):
            order = list(range(len(configs)))
            print(f"round {number + 1} of {rounds}", flush=True)
            run_round(args.settings, configs, order if number % 2 == 0 else order[::-1], Path(scratch), skip,
                      results)
    print(f"\n{steps}-step trials, timed after step {skip} of each; {rounds} rounds\n")
    print("\n".join(table(args.settings, results)))


if __name__ == "__main__":
    main()
