"""The findings of the multi-turn LoRA study (see the README) and how a comparison sweep checks each one.

A report of a sweep that varies one of these keys says what the study found for it and whether this sweep
reproduced it. Each finding is a few checks; each check gives whether it held and the numbers it looked at.
The thresholds ("barely moves": under 10 %, "nearly identical": within 20 %, ...) are stated in the check's
text, so a reader can disagree with them.
"""

from dataclasses import dataclass
from statistics import mean, median
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ftharness.runs import Run

Check = Tuple[str, bool, str]  # what was checked, whether it held, the numbers it looked at


@dataclass(frozen=True)
class Finding:
    comparison: str  # a heading, e.g. "learning rate"
    claim: str  # what the study found
    checks: Callable[[List[Run]], List[Check]]  # runs of the sweep, sorted by value


def verdict(checks: Sequence[Check]) -> str:
    held = sum(1 for _, ok, _ in checks if ok)
    if not checks:
        return "not checked: no finished runs"
    return "reproduced" if held == len(checks) else ("not reproduced" if held == 0 else "partly reproduced")


def _pct(value: float) -> str:
    return f"{value:+.0%}"


def _spread(values: Sequence[float]) -> float:
    """(max - min) / mean: how far apart a few values are, relative to their size."""
    return (max(values) - min(values)) / mean(values)


def _trend(values: Sequence[float]) -> int:
    """+1 if strictly increasing, -1 if strictly decreasing, 0 otherwise."""
    steps = [b - a for a, b in zip(values, values[1:])]
    return 1 if all(s > 0 for s in steps) else (-1 if all(s < 0 for s in steps) else 0)


def _series(runs: Sequence[Run], number: Callable[[Run], Optional[float]]) -> str:
    return ", ".join(f"{r.label}: {_g(number(r))}" for r in runs)


def _g(value: Optional[float]) -> str:
    """3 significant digits, without exponents for the large numbers (MB, seconds)."""
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _finished(runs: Sequence[Run]) -> List[Run]:
    return [r for r in runs if r.state == "completed"]


def _learning_rate(runs: List[Run]) -> List[Check]:
    checks = []
    lowest, highest = runs[0], runs[-1]
    if len(lowest.evals) > 1:  # eval loss: the same chats every time, so no batch-to-batch noise
        first, last = lowest.evals[0]["loss"], lowest.evals[-1]["loss"]
        third = max(len(lowest.grad_norms) // 3, 1)
        checks.append((f"the lowest lr ({lowest.label}) barely moves the eval loss (under 10 %)",
                       abs(last / first - 1) < 0.1,
                       f"eval loss {_g(first)} -> {_g(last)} ({_pct(last / first - 1)}); median grad_norm of the "
                       f"first / last third of the steps {_g(median(lowest.grad_norms[:third]))} / "
                       f"{_g(median(lowest.grad_norms[-third:]))}"))
    others = [g for r in runs[:-1] for g in r.grad_norms]
    if highest.grad_norms and others:
        exploded = highest.state == "diverged" or max(highest.grad_norms) > 10 * max(others)
        checks.append((f"the highest lr ({highest.label}) explodes (diverged, or grad_norm over 10 x the others' "
                       "maximum)", exploded, f"{highest.state}; max grad_norm {_g(max(highest.grad_norms))} vs "
                       f"{_g(max(others))} for the lower rates; {highest.reason or ''}".rstrip("; ")))
    ranked = [r for r in runs if r.best_eval_loss is not None and r.state != "diverged"]
    if ranked:
        best = min(ranked, key=lambda r: r.best_eval_loss)
        checks.append(("the best eval loss lies in 2e-4 .. 1e-3", 2e-4 <= best.number <= 1e-3,
                       f"best at {best.label} ({_g(best.best_eval_loss)}); {_series(ranked, lambda r: r.best_eval_loss)}"))
    spiky = [r for r in runs if 2e-4 <= r.number <= 1e-3 and r.grad_norms]
    if spiky:
        early = [max(r.grad_norms[:len(r.grad_norms) // 3 or 1]) / r.median_grad_norm for r in spiky]
        checks.append(("at 2e-4 .. 1e-3 grad_norm spikes early (max of the first third over 2 x the run's median)",
                       all(e > 2 for e in early), ", ".join(f"{r.label}: {e:.2g} x" for r, e in zip(spiky, early))))
    return checks


def _rank(runs: List[Run]) -> List[Check]:
    done = _finished(runs)
    if len(done) < 2:
        return []
    losses = [r.best_eval_loss for r in done]
    grads = [r.median_grad_norm for r in done]
    memory = [r.summary.get("peak_memory_mb") or 0 for r in done]
    return [
        ("eval loss nearly identical across ranks (within 20 % of their mean)", _spread(losses) < 0.2,
         f"best eval loss {_series(done, lambda r: r.best_eval_loss)} (spread {_spread(losses):.0%})"),
        ("higher rank, lower grad_norm (median over the run falls as r grows)", _trend(grads) == -1,
         f"median grad_norm {_series(done, lambda r: r.median_grad_norm)}"),
        ("memory barely changes (peak within 10 %)", _spread(memory) < 0.1,
         f"peak memory MB {_series(done, lambda r: r.summary.get('peak_memory_mb'))} (spread {_spread(memory):.0%})"),
    ]


def _alpha(runs: List[Run]) -> List[Check]:
    done = {r.number: r for r in _finished(runs)}
    if 16 not in done or 32 not in done:
        return []
    low, high = done[16], done[32]
    return [("alpha 16 converges better than 32 (lower best eval loss)", low.best_eval_loss < high.best_eval_loss,
             f"best eval loss alpha 16: {_g(low.best_eval_loss)}, alpha 32: {_g(high.best_eval_loss)}; final train "
             f"loss {_g(low.losses[-1])} vs {_g(high.losses[-1])}")]


def _little_effect(runs: List[Run]) -> List[Check]:
    done = _finished(runs)
    if len(done) < 2:
        return []
    losses = [r.best_eval_loss for r in done]
    return [("little effect on eval loss (within 20 % of their mean)", _spread(losses) < 0.2,
             f"best eval loss {_series(done, lambda r: r.best_eval_loss)} (spread {_spread(losses):.0%})")]


STUDY_MODULE_SETS = ["all-linear", "attention", "qk"]  # what the study compared, most modules first (not mlp)


def _target_modules(runs: List[Run]) -> List[Check]:
    by_set = {r.label: r for r in _finished(runs)}
    compared = [by_set[name] for name in STUDY_MODULE_SETS if name in by_set]
    if len(compared) < 2:
        return []
    per_step = [r.summary["train_time_s"] / max(r.summary["steps"], 1) for r in compared]
    return [*_little_effect(compared),
            ("fewer trained modules, faster steps (train time per step falls from all-linear to qk)",
             _trend(per_step) == -1, ", ".join(f"{r.label} ({r.summary['trainable_params'] / 1e6:.2f}M params): "
                                               f"{t:.2f} s" for r, t in zip(compared, per_step)))]


def _epochs(runs: List[Run]) -> List[Check]:
    longest = max(_finished(runs), key=lambda r: r.number, default=None)
    if longest is None or len(longest.evals) < 3:
        return []
    per_epoch = [(round(e["epoch"]), e["loss"]) for e in longest.evals if e["epoch"]]
    best_epoch, best_loss = min(per_epoch, key=lambda pair: pair[1])
    last_epoch, last_loss = per_epoch[-1]
    table = ", ".join(f"{epoch}: {loss:.3g}" for epoch, loss in per_epoch)
    accuracy = _series(_finished(runs), lambda r: r.summary.get("after", {}).get("test_accuracy"))
    return [("eval loss is best within ~5 epochs", best_epoch <= 5,
             f"eval loss by epoch of the {longest.label} run: {table}"),
            (f"more epochs hurt generalisation (eval loss after epoch {last_epoch} above its best)",
             last_loss > best_loss * 1.05, f"best {best_loss:.3g} at epoch {best_epoch}, last {last_loss:.3g}; "
                                           f"test accuracy {accuracy}")]


def _batch_size(runs: List[Run]) -> List[Check]:
    done = _finished(runs)
    if len(done) < 2:
        return []
    return [
        ("larger batch, smoother loss (mean step-to-step change falls)", _trend([r.loss_jitter for r in done]) == -1,
         f"loss jitter {_series(done, lambda r: r.loss_jitter)}"),
        ("larger batch, shorter wall time", _trend([r.summary["train_time_s"] for r in done]) == -1,
         f"train time s {_series(done, lambda r: r.summary['train_time_s'])}"),
        ("larger batch, more memory", _trend([r.summary["peak_memory_mb"] for r in done]) == 1,
         f"peak memory MB ({done[0].summary.get('memory_kind')}) "
         f"{_series(done, lambda r: r.summary['peak_memory_mb'])}"),
    ]


def _grad_accum(runs: List[Run]) -> List[Check]:
    done = _finished(runs)
    if len(done) < 2:
        return []
    low, high = done[0], done[-1]
    step = len(high.losses)  # compare both after as many optimizer steps as the larger accumulation made
    return [
        ("more accumulation, fewer optimizer steps for the same samples", high.summary["steps"] < low.summary["steps"],
         f"steps {_series(done, lambda r: r.summary['steps'])}"),
        (f"more accumulation converges in fewer steps (lower loss at step {step})",
         high.losses[step - 1] < low.losses[step - 1],
         f"train loss at step {step}: {low.label}: {_g(low.losses[step - 1])}, {high.label}: "
         f"{_g(high.losses[step - 1])}"),
        ("more accumulation, smoother loss (mean step-to-step change)", high.loss_jitter < low.loss_jitter,
         f"loss jitter {_series(done, lambda r: r.loss_jitter)}"),
    ]


FINDINGS: Dict[str, Finding] = {
    "optim.lr": Finding("learning rate", "2e-6: loss and grad_norm barely move; 2e-4 .. 1e-3: fast, with early "
                        "grad_norm spikes; 1e-2: gradient explosion. The good range is about 2e-4 to 1e-3.",
                        _learning_rate),
    "lora.r": Finding("LoRA rank", "Loss curves nearly identical; higher rank gave lower grad_norm; memory barely "
                      "changes.", _rank),
    "lora.alpha": Finding("LoRA alpha", "At the same rank, alpha 16 converged better than 32.", _alpha),
    "lora.dropout": Finding("LoRA dropout", "Little effect.", _little_effect),
    "lora.target_modules": Finding("target modules", "All linear layers vs attention only vs q/k only: similar "
                                   "loss; fewer modules train faster.", _target_modules),
    "train.epochs": Finding("epochs", "Up to ~5 epochs is fine; more hurts generalisation.", _epochs),
    "train.per_device_batch_size": Finding("per-device batch size", "A larger batch gives a smoother loss, a "
                                           "shorter wall time and uses more memory.", _batch_size),
    "train.grad_accum_steps": Finding("gradient accumulation", "16 vs 4 steps: fewer optimizer steps, converges in "
                                      "fewer steps, smoother.", _grad_accum),
}
