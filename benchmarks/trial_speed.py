"""Trial speed: the tutorial's pipeline against the harness's trial, every figure a ratio taken in one run.

    python benchmarks/trial_speed.py [--quick] [--steps 12] [--trials 2] [--rounds 1] [--device auto]
                                     [--random-model SHAPE [--tokenizer DIR]] [override ...]

The reference is the tutorial's pipeline as a user writes it first: a fresh model load per trial (fp32),
the chats tokenized in the script, transformers' stock Trainer with `DataCollatorForSeq2Seq(padding=True)`,
fp32, the stock loss (logits at every position) and evaluations over the whole eval set; and the same pipeline in
bf16 autocast (`TrainingArguments(bf16=True)`, its strongest setting on a CPU with AVX512_BF16: a ratio against a
pipeline in another precision alone overstates what the harness's code does). The harness runs
`ftharness.trial.run_trial` twice in one process: its first trial (base load, base scores) and a later one,
as every trial after the first of a sweep. Both train the same model on the same rows, for the same steps
with the same seed and hyperparameters: the default study's trial (12 steps, eval every 4, 32 eval rows,
100 test rows). Overrides (e.g. `train.precision=fp32`) apply to the harness only.

Each pipeline runs in its own process (peak memory is the process's resident peak). Time is split into
phases by wrapping the Trainer's `train` / `evaluate` and the task's test scoring: training (optimizer
steps), eval loss, test scoring (the harness's test accuracy; the reference has none), and the rest (set-up:
load, tokenize, build the Trainer; save; tracking). Tokens per CPU-second (the process's CPU time over all its
threads) is the figure least disturbed when other work shares the cores. Model FLOP/s count 4 x the frozen linear
weights (forward, and backward to the activations) + 6 x the LoRA weights per trained token, attention scores left
out, the same count for both: per trained token, the rate of useful work; per token run, the rate of work
done (a prefix that all rows of a batch share runs once in the harness: ftharness/trial/loss.py), as a share of
the matmul peak of the precision in use, which the script measures itself with torch matmuls before the pipelines
start.

On a GPU (`--device cuda`, the default where one is found) both pipelines run there, the peak is that of the
GPU's matrix products (fp32 without TF32, as the reference runs, and bf16), and the table adds each process's
peak of CUDA-allocated memory. `--random-model SHAPE` runs both on a model of that shape with random weights
(benchmarks/random_model.py) and the tokenizer of `--tokenizer` (default: `model.name_or_path`'s): right for
speed and memory, not for learning, where no weights can be downloaded; benchmarks/gpu_trial.sh runs it on a 7B
shape.

The last line: `trial_speed: harness/reference tokens/s = X.XX (bf16 reference: Y.YY)` (the harness's later trial;
its only one with `--trials 1`).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from ftharness.model.hardware import cpu_has_fast_bf16
from ftharness.ui.console import quiet_library_notices
from random_model import RANDOM_SHAPES, build_random_model

REPO = Path(__file__).resolve().parents[1]
STUDY_TRIAL = ["data.eval_size=32", "data.test_size=100", "train.max_steps=12", "train.eval_steps=4",
               "eval.max_new_tokens=0"]  # the default study's trial (sweeps/default.yaml)
QUICK = ["model=tiny", "tracker.mode=disabled", "data.train_size=48", "data.eval_size=8", "data.test_size=16",
         "train.max_steps=3", "train.eval_steps=2", "eval.max_new_tokens=0"]
REFERENCES = {"reference": "fp32", "reference-bf16": "bf16"}  # the stock pipeline in each precision: its worker
PHASES = ("train", "eval", "test", "other")
PHASE_NAMES = {"train": "training (optimizer steps)", "eval": "eval loss", "test": "test scoring",
               "other": "set-up and the rest"}
# ---- the machine's peak ------------------------------------------------------------------------------

def matmul_peak_gflops(dtype: torch.dtype, size: int, seconds: float, device: str = "cpu") -> float:
    """GFLOP/s of repeated square matrix products in `dtype`: the best this machine does through torch."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # GPU products run queued
    for _ in range(3):
        a @ b
    synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    synchronize()
    return 2 * size ** 3 * count / (time.perf_counter() - start) / 1e9


def measured_peaks(device: str, quick: bool) -> dict:
    """The matmul peak of each precision a pipeline may use: fp32, and bf16 where it runs in hardware (on the
    CPU, elsewhere bf16 products are emulated: minutes for a figure no pipeline uses)."""
    size, seconds = (256, 0.2) if quick else (8192, 2.0) if device == "cuda" else (2048, 2.0)
    peaks = {"fp32": matmul_peak_gflops(torch.float32, size, seconds, device), "bf16": float("nan")}
    if device == "cuda" or cpu_has_fast_bf16():
        peaks["bf16"] = matmul_peak_gflops(torch.bfloat16, size, seconds, device)
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    bf16 = f"{peaks['bf16']:,.0f} GFLOP/s" if peaks["bf16"] == peaks["bf16"] else "not measured (no AVX512_BF16 / AMX)"
    print(f"matmul peak ({size}^3, torch, {where}): fp32 {peaks['fp32']:,.0f} GFLOP/s, bf16 {bf16}")
    return peaks


# ---- a model with random weights ----------------------------------------------------------------------

def random_model(shape: str, tokenizer_dir: str, target: Path, device: str) -> None:
    """benchmarks/random_model.py's model of `shape`, then the GPU's memory freed for the pipelines' processes."""
    built = build_random_model(shape, tokenizer_dir, target, device)
    print(f"random-weight model: {shape}, {built['parameters'] / 1e9:.2f}B parameters, vocabulary "
          f"{built['vocab_size']}, in {target}")
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- instrumentation, the same for both pipelines ------------------------------------------------------

class PhaseClock:
    """Wall and CPU time per phase, each wrapped call counting its own time minus that of wrapped calls inside
    it (the periodic evaluations inside `Trainer.train` count as eval, not training); and trained tokens.

    CPU time (all threads of the process) is less disturbed than wall time when other work shares the cores.
    """

    def __init__(self):
        self.seconds = defaultdict(float)
        self.cpu_seconds = defaultdict(float)
        self.tokens = self.tokens_run = 0
        self._stack = []

    def wrap(self, owner, name: str, phase: str) -> None:
        original, clock = getattr(owner, name), self

        def timed(*args, **kwargs):
            clock._stack.append((0.0, 0.0))  # wall and CPU time spent in nested wrapped calls
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                nested, nested_cpu = clock._stack.pop()
                clock.seconds[phase] += elapsed - nested
                clock.cpu_seconds[phase] += cpu - nested_cpu
                if clock._stack:
                    outer, outer_cpu = clock._stack[-1]
                    clock._stack[-1] = (outer + elapsed, outer_cpu + cpu)

        setattr(owner, name, timed)

    def count_tokens(self, trainer_class) -> None:
        """Count the non-padding tokens of every training micro-batch (a packed batch has no padding), and those
        that ran through the model: a shared prefix that ran once (ftharness/trial/loss.py) ran for one row only.

        The same work for both pipelines and no host sync: the counts add up on the device, read once at the end
        (an `int()` per micro-batch here, and the harness's prefix length found anew, once added 1 sync per
        micro-batch to the reference and 4 to the harness)."""
        original, clock = trainer_class.training_step, self

        def counted(trainer, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            tokens = mask.sum() if mask is not None else inputs["input_ids"].numel()
            shared = inputs.get("shared_prefix", 0) if getattr(trainer, "share_prefix", False) else 0
            clock.tokens = clock.tokens + tokens
            clock.tokens_run = clock.tokens_run + tokens - shared * (len(inputs["input_ids"]) - 1)
            return original(trainer, model, inputs, *args, **kwargs)

        trainer_class.training_step = counted

    def result(self, wall: float, steps: int) -> dict:
        seconds = {phase: self.seconds.get(phase, 0.0) for phase in PHASES[:-1]}
        seconds["other"] = wall - sum(seconds.values())
        tokens, tokens_run = int(self.tokens), int(self.tokens_run)
        return {"wall_s": wall, "seconds": seconds, "tokens": tokens, "steps": steps,
                "tokens_per_s": tokens / seconds["train"], "s_per_step": seconds["train"] / steps,
                "tokens_run_per_s": tokens_run / seconds["train"],
                "tokens_per_cpu_s": tokens / self.cpu_seconds["train"]}

    def reset(self) -> None:
        self.seconds.clear()
        self.cpu_seconds.clear()
        self.tokens = self.tokens_run = 0


def flops_per_token(model) -> float:
    """4 x frozen linear weights (forward + backward to the activations) + 6 x trainable weights."""
    frozen = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4.0 * frozen + 6.0 * trainable


def tokenizer_folder(overrides) -> str:
    """The local folder of the configured model (built first if it is an embedded one), for its tokenizer."""
    from ftharness.model.embedded import resolve_model_path

    cfg = compose(overrides)
    return resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ftharness.config.schema import register_schema
    from ftharness.config.validation import validate

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    validate(cfg)
    return cfg


# ---- the two pipelines ------------------------------------------------------------------------------

def reference_trainer(cfg, out_dir: Path, precision: str = "fp32"):
    """The tutorial's script up to `trainer.train()`: load (4-bit with bitsandbytes where the config's LoRA is
    QLoRA), tokenize, stock peft LoRA, the stock Trainer (its loss at every position, padded batches, checkpointing
    as configured) in fp32 or, with `precision="bf16"`, its bf16 autocast."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ftharness.config.validation import target_module_names
    from ftharness.data.splits import load_splits
    from ftharness.data.tokenization import encode_row
    from ftharness.model.embedded import resolve_model_path

    device = cfg.train.device  # resolved by main()
    path = resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    four_bit = cfg.lora.quantization == "4bit"
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.lora.quant_type,
                                      bnb_4bit_use_double_quant=cfg.lora.double_quant,
                                      bnb_4bit_compute_dtype=torch.float32) if four_bit else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=quantization,
                                                 device_map={"": device})
    if four_bit:
        model = prepare_model_for_kbit_training(model, cfg.train.gradient_checkpointing)
    splits = load_splits(cfg.data)
    train_set, eval_set = (Dataset.from_list([encode_row(tokenizer, row, cfg.data.max_length, cfg.data.train_on)
                                              for row in rows]) for rows in (splits.train, splits.eval))
    set_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=target_module_names(cfg), task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=cfg.train.max_steps,
        per_device_train_batch_size=cfg.train.per_device_batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size, gradient_accumulation_steps=cfg.train.grad_accum_steps,
        activation_checkpointing=cfg.train.gradient_checkpointing,
        learning_rate=cfg.optim.lr, lr_scheduler_type=cfg.optim.scheduler,
        warmup_steps=cfg.optim.warmup if cfg.optim.warmup < 1 else int(cfg.optim.warmup),
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.max_grad_norm, optim=cfg.optim.name,
        logging_steps=cfg.train.logging_steps, eval_strategy="steps" if cfg.train.eval_steps else "no",
        eval_steps=cfg.train.eval_steps or None, save_strategy="no", report_to="none", seed=cfg.seed,
        use_cpu=device == "cpu", bf16=precision == "bf16", disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                   data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), processing_class=tokenizer)


def reference_trial(cfg, out_dir: Path, clock: PhaseClock, precision: str) -> dict:
    """The tutorial's script (reference_trainer), trained and evaluated, its adapter saved."""
    started = time.perf_counter()
    trainer = reference_trainer(cfg, out_dir, precision)
    trainer.train()
    final = trainer.evaluate() if trainer.state.global_step % cfg.train.eval_steps else {}
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    trainer.model.save_pretrained(out_dir / "adapter")
    result = clock.result(time.perf_counter() - started, trainer.state.global_step)
    return {**result, "final_loss": losses[-1]["loss"], "eval_loss": final.get("eval_loss", evals[-1]["eval_loss"]),
            "test_accuracy": None, "precision": precision, "flops_per_token": flops_per_token(trainer.model)}


def harness_trial(cfg, out_dir: Path, clock: PhaseClock, name: str) -> dict:
    from ftharness.model.adapters import attach_adapter, detach_adapter
    from ftharness.model.hardware import resolve_hardware
    from ftharness.model.loading import load_base
    from ftharness.trial.recipe import run_trial

    started = time.perf_counter()
    out_dir.mkdir(parents=True)
    summary = run_trial(cfg, out_dir, name, {})
    result = clock.result(time.perf_counter() - started, summary.steps)
    model, _, _ = load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))  # the cached base: no load
    adapted = attach_adapter(model, cfg)
    flops = flops_per_token(adapted)
    detach_adapter(adapted)
    return {**result, "final_loss": summary.final_loss, "eval_loss": summary.after["eval_loss"],
            "test_accuracy": summary.after.get("test_accuracy"), "precision": summary.precision,
            "flops_per_token": flops}


def worker(kind: str, overrides, out_file: Path, trials: int) -> None:
    from transformers import Trainer

    from ftharness.trial.tasks import SFT

    clock = PhaseClock()
    clock.wrap(Trainer, "train", "train")
    clock.wrap(Trainer, "evaluate", "eval")
    clock.wrap(SFT, "measure", "test")
    clock.count_tokens(Trainer)
    cfg = compose(overrides)
    results = []
    if kind in REFERENCES:
        results.append(reference_trial(cfg, Path(kind), clock, REFERENCES[kind]))
    else:
        for trial in range(1, trials + 1):
            clock.reset()
            results.append(harness_trial(cfg, Path(f"harness-{trial}"), clock, f"trial-{trial}"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cfg.train.device == "cuda" else None
    out_file.write_text(json.dumps([{**r, "peak_rss_mb": peak_mb, "peak_gpu_mb": gpu_mb} for r in results]))


# ---- the table ----------------------------------------------------------------------------------------

def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"


def table(runs: dict, peaks: dict) -> str:
    """One column per run (the references first), and the last run over each reference."""
    for run in runs.values():
        run["gflops"] = run["tokens_per_s"] * run["flops_per_token"] / 1e9
        run["gflops_run"] = run["tokens_run_per_s"] * run["flops_per_token"] / 1e9
        run["peak_share"] = run["gflops_run"] / peaks[run["precision"]]
    rows = [("tokens/s (trained, non-padding)", "tokens_per_s", 1),
            ("tokens per CPU-second (all threads)", "tokens_per_cpu_s", 1), ("s per optimizer step", "s_per_step", 2),
            ("trial wall time s", "wall_s", 1)]
    rows += [(f"share: {PHASE_NAMES[p]}", ("share", p), 2) for p in PHASES]
    rows += [("peak RSS MB (process)", "peak_rss_mb", 0), ("peak GPU memory MB (process, allocated)", "peak_gpu_mb", 0),
             ("final train loss", "final_loss", 4),
             ("eval loss after", "eval_loss", 4), ("test accuracy after", "test_accuracy", 3),
             ("precision", "precision", 0), ("model GFLOP/s per trained token", "gflops", 1),
             ("model GFLOP/s run (shared prefixes once)", "gflops_run", 1),
             ("share of the matmul peak (its precision)", "peak_share", 3)]

    def get(run, key):
        if isinstance(key, tuple):
            return run["seconds"][key[1]] / run["wall_s"]
        return run[key]

    references = [name for name in runs if name.startswith("reference")]
    last = list(runs)[-1].split(",")[-1].strip()
    lines = ["| | " + " | ".join([*runs, *(f"{last} / {name}" for name in references)]) + " |",
             "|---|" + "---|" * (len(runs) + len(references))]
    for label, key, digits in rows:
        values = {name: get(run, key) for name, run in runs.items()}
        if all(value is None for value in values.values()):  # e.g. GPU memory on the CPU
            continue
        latest = list(values.values())[-1]
        cells = [_fmt(v, digits) for v in values.values()] + [_ratio(latest, values[name]) for name in references]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(value, reference) -> str:
    numeric = all(isinstance(v, (int, float)) for v in (value, reference)) and reference
    return f"{value / reference:.2f}x" if numeric else ""


def median_run(runs: list) -> dict:
    """Each numeric figure's median over `runs` (the phases' seconds too); the other fields of the first run."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, dict):
            merged[key] = {k: statistics.median(run[key][k] for run in runs) for k in value}
        elif isinstance(value, (int, float)):
            merged[key] = statistics.median(run[key] for run in runs)
    return merged


def run_worker(kind: str, overrides, folder: Path, trials: int) -> list:
    out_file = folder / f"{kind}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--out", str(out_file),
               "--trials", str(trials), *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"trial_speed: the {kind} pipeline failed:\n{done.stderr[-4000:]}")
    return json.loads(out_file.read_text())


def main() -> None:
    quiet_library_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 3 steps: for tests")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial (default: the study trial's 12)")
    parser.add_argument("--trials", type=int, choices=(1, 2), default=2,
                        help="harness trials in one process: the first, and a later one as in a sweep")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each pipeline, alternated: the table shows "
                                                              "each figure's median")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where both pipelines run (auto: cuda if available)")
    parser.add_argument("--random-model", choices=sorted(RANDOM_SHAPES),
                        help="run on a model of this shape with random weights (built once, before the pipelines)")
    parser.add_argument("--tokenizer", help="the random model's tokenizer folder (default: model.name_or_path's)")
    parser.add_argument("--worker", choices=(*REFERENCES, "harness"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*",
                        help="config overrides for the harness's trial, e.g. train.precision=fp32")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.overrides, args.out, args.trials)
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    common = (QUICK if args.quick else STUDY_TRIAL) + ([f"train.max_steps={args.steps}"] if args.steps else [])
    common.append(f"train.device={device}")
    peaks = measured_peaks(device, args.quick)
    references, harnesses = [], []
    with tempfile.TemporaryDirectory(prefix="trial_speed-") as scratch:
        if args.random_model:
            tokenizer = args.tokenizer or tokenizer_folder(common + args.overrides)
            random_model(args.random_model, tokenizer, Path(scratch) / "model", device)
            common.append(f"model.name_or_path={Path(scratch) / 'model'}")
        for round_ in range(args.rounds):  # alternated, so that a slow spell of a shared machine hits both pipelines
            folder = Path(scratch) / f"round-{round_}"
            folder.mkdir()
            references.append({kind: run_worker(kind, common, folder, 1)[0] for kind in REFERENCES})
            harnesses.append(run_worker("harness", [*common, *args.overrides], folder, args.trials))
    reference = {kind: median_run([run[kind] for run in references]) for kind in REFERENCES}
    harness = [median_run(trials) for trials in zip(*harnesses)]
    print(f"trial: {' '.join(common)}; harness overrides: {' '.join(args.overrides) or 'none'}; "
          f"medians of {args.rounds} round(s)\n")
    names = ["harness, 1st trial", "harness, later trial"][:len(harness)]
    print(table({"reference": reference["reference"], "reference, bf16": reference["reference-bf16"],
                 **dict(zip(names, harness))}, peaks))
    ratios = [harness[-1]["tokens_per_s"] / reference[kind]["tokens_per_s"] for kind in REFERENCES]
    print(f"\ntrial_speed: harness/reference tokens/s = {ratios[0]:.2f} (bf16 reference: {ratios[1]:.2f})")


if __name__ == "__main__":
    main()
