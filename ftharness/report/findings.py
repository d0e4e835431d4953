"""The findings of the multi-turn LoRA study (docs/comparisons.md) and how a comparison sweep checks each one.

A report of a sweep that varies one of these keys says what the study found for it and whether this sweep
reproduced it. Each finding is a few checks; each check gives its outcome and the numbers it looked at. The
thresholds ("barely moves": under 10 %, "nearly identical": within 20 %, ...) are stated in the check's text,
so a reader can disagree with them.

Seed noise. A comparison preset runs every value with several seeds (`hydra.sweeper.seeds`); a value's number
is the mean over its seeds with their range, written `mean (min..max)` (ftharness/report/seeds.py). A check that
compares two values holds only when the difference exceeds the seed spread, that is when their ranges do not
overlap, and fails when they are apart the other way; where the ranges overlap it is `within seed noise`: the
sweep cannot tell the values apart. A check against a threshold ("under 10 %", "over 2 x") holds when every
seed is on its side, fails when none is, and is within seed noise when the seeds straddle it. A check that
claims values are alike ("within 20 % of their mean") holds when the means are that close, fails when the
farthest apart differ beyond their ranges, and is within seed noise in between. With one seed per value no
spread is known: every check holds or fails on the values as they are.

Verdicts: every check held: `reproduced`; every check within seed noise: `within seed noise`; otherwise
`partly reproduced` when some held, `not reproduced` when none did. A check within seed noise never counts
as held, and the verdict says how many there were ("partly reproduced (1 of 3 within seed noise)").
"""

from dataclasses import dataclass
from statistics import mean, median
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

from ftharness.contract import Status
from ftharness.report.runs import Run
from ftharness.report.seeds import Number, Spread, ValueGroup, spread_of
from ftharness.ui.formatting import format_change, format_plain

HELD, FAILED, NOISE = "held", "not held", "within seed noise"  # a check's outcomes
SYMBOLS = {HELD: "✔", FAILED: "✘", NOISE: "≈"}


class Check(NamedTuple):
    what: str  # what was checked
    outcome: str  # HELD, FAILED or NOISE
    numbers: str  # the numbers it looked at: means with their seeds' min..max


@dataclass(frozen=True)
class Finding:
    comparison: str  # a heading, e.g. "learning rate"
    claim: str  # what the study found
    checks: Callable[[List[ValueGroup]], List[Check]]  # the sweep's runs grouped by value, sorted by value


def verdict(checks: Sequence[Check]) -> str:
    if not checks:
        return "not checked: no finished runs"
    held = sum(c.outcome == HELD for c in checks)
    noise = sum(c.outcome == NOISE for c in checks)
    if held == len(checks):
        return "reproduced"
    if noise == len(checks):
        return NOISE
    word = "partly reproduced" if held else "not reproduced"
    return f"{word} ({noise} of {len(checks)} {NOISE})" if noise else word


# ---- outcomes: a difference counts when it exceeds the seed spread -------------------------------------


def below(low: Spread, high: Spread) -> str:
    """Whether `low` lies below `high` beyond seed noise: all of its seeds under all of the other's."""
    if low.hi < high.lo:
        return HELD
    return FAILED if high.hi <= low.lo else NOISE


def _under(value: Spread, limit: float) -> str:
    """Whether every seed lies under `limit` (none: failed; some: within seed noise)."""
    return HELD if value.hi < limit else (FAILED if value.lo >= limit else NOISE)


def _over(value: Spread, limit: float) -> str:
    return HELD if value.lo > limit else (FAILED if value.hi <= limit else NOISE)


def _every(flags: Sequence[bool]) -> str:
    """Held when every seed shows it, failed when none does, within seed noise when some do."""
    return HELD if all(flags) else (FAILED if not any(flags) else NOISE)


def _all(outcomes: Iterable[str]) -> str:
    """Held when every part held; failed when one failed; else within seed noise."""
    outcomes = list(outcomes)
    return FAILED if FAILED in outcomes else (NOISE if NOISE in outcomes else HELD)


def _falls(values: Sequence[Spread]) -> str:
    """Each value below the one before it, beyond seed noise."""
    return _all(below(b, a) for a, b in zip(values, values[1:]))


def _rises(values: Sequence[Spread]) -> str:
    return _all(below(a, b) for a, b in zip(values, values[1:]))


def _alike(values: Sequence[Spread], tolerance: float) -> str:
    """Means within `tolerance` of their mean: held; the lowest and highest apart beyond their seeds: failed."""
    if _apart(values) < tolerance:
        return HELD
    lowest, highest = min(values, key=lambda v: v.mean), max(values, key=lambda v: v.mean)
    return FAILED if below(lowest, highest) == HELD else NOISE


def _apart(values: Sequence[Spread]) -> float:
    """(max - min) / mean of the means: how far apart a few values are, relative to their size."""
    means = [v.mean for v in values]
    return (max(means) - min(means)) / mean(means)


# ---- the numbers a check shows ---------------------------------------------------------------------------


def _text(value: Optional[Spread], number_format: Callable[[float], str] = format_plain) -> str:
    return value.text(number_format) if value else "n/a"


def _series(groups: Sequence[ValueGroup], number: Number) -> str:
    return ", ".join(f"{g.label}: {_text(g.spread(number))}" for g in groups)


def _done(groups: Sequence[ValueGroup]) -> List[ValueGroup]:
    """The values with at least one completed seed (their numbers are over the completed seeds)."""
    return [g for g in groups if g.finished]


def _best_eval_loss(run: Run) -> Optional[float]:
    return run.best_eval_loss


def _median_grad_norm(run: Run) -> Optional[float]:
    return run.median_grad_norm


def _peak_memory(run: Run) -> Optional[float]:
    return run.summary.peak_memory_mb


def _train_time(run: Run) -> Optional[float]:
    return run.summary.steps_time_s


def _loss_jitter(run: Run) -> Optional[float]:
    return run.loss_jitter


def _test_accuracy(run: Run) -> Optional[float]:
    return run.summary.after.get("test_accuracy")


# ---- the findings' checks --------------------------------------------------------------------------------


def _eval_change(run: Run) -> Optional[float]:
    """The eval loss's relative change from before training to the last evaluation."""
    return run.evals[-1]["loss"] / run.evals[0]["loss"] - 1 if len(run.evals) > 1 else None


def _early_spike(run: Run) -> Optional[float]:
    """The largest grad_norm of the first third of the steps over the run's median."""
    grads = run.grad_norms
    return max(grads[:len(grads) // 3 or 1]) / run.median_grad_norm if grads else None


def _good_lr(group: ValueGroup) -> bool:
    """In the study's good range, 2e-4 .. 1e-3."""
    return 2e-4 <= group.number <= 1e-3


def _learning_rate(groups: List[ValueGroup]) -> List[Check]:
    checks = []
    lowest, highest = groups[0], groups[-1]
    change = spread_of(lowest.runs, _eval_change)  # eval loss: the same chats every time, no batch-to-batch noise
    if change:
        def third(r: Run) -> int:
            return max(len(r.grad_norms) // 3, 1)

        first = spread_of(lowest.runs, lambda r: median(r.grad_norms[:third(r)]) if r.grad_norms else None)
        last = spread_of(lowest.runs, lambda r: median(r.grad_norms[-third(r):]) if r.grad_norms else None)
        checks.append(Check(f"the lowest lr ({lowest.label}) barely moves the eval loss (under 10 %)",
                            _under(Spread(tuple(map(abs, change.values))), 0.1),
                            f"eval loss {format_plain(lowest.runs[0].evals[0]['loss'])} -> "
                            f"{_text(spread_of(lowest.runs, lambda r: r.evals[-1]['loss']))}, a change of "
                            f"{_text(change, format_change)}; median grad_norm of the first / last third of the steps "
                            f"{_text(first)} / {_text(last)}"))
    others = [grad for group in groups[:-1] for r in group.runs for grad in r.grad_norms]
    peaks = spread_of(highest.runs, lambda r: max(r.grad_norms) if r.grad_norms else None)
    if peaks and others:
        exploded = [r.state == Status.DIVERGED or max(r.grad_norms) > 10 * max(others)
                    for r in highest.runs if r.grad_norms]
        reasons = "; ".join(dict.fromkeys(r.reason for r in highest.runs if r.reason))
        checks.append(Check(f"the highest lr ({highest.label}) explodes (diverged, or grad_norm over 10 x the "
                            "others' maximum)", _every(exploded),
                            f"{highest.states}; max grad_norm {_text(peaks)} vs {format_plain(max(others))} for the "
                            "lower "
                            f"rates; {reasons}".rstrip("; ")))
    losses = {g.label: spread_of([r for r in g.runs if r.state != Status.DIVERGED], _best_eval_loss) for g in groups}
    ranked = [g for g in groups if losses[g.label]]
    if ranked:
        def best_of(values: Iterable[ValueGroup]) -> Optional[Spread]:
            return min((losses[g.label] for g in values), key=lambda s: s.mean, default=None)

        inside, outside = best_of(g for g in ranked if _good_lr(g)), best_of(g for g in ranked if not _good_lr(g))
        best = min(ranked, key=lambda g: losses[g.label].mean)
        checks.append(Check("the best eval loss lies in 2e-4 .. 1e-3",
                            FAILED if inside is None else (HELD if outside is None else below(inside, outside)),
                            f"best at {best.label}: {_text(losses[best.label])}; "
                            + ", ".join(f"{g.label}: {_text(losses[g.label])}" for g in ranked)))
    spiky = [g for g in groups if _good_lr(g) and spread_of(g.runs, _early_spike)]
    if spiky:
        spikes = [spread_of(g.runs, _early_spike) for g in spiky]
        checks.append(Check("at 2e-4 .. 1e-3 grad_norm spikes early (max of the first third over 2 x the run's "
                            "median)", _all(_over(s, 2) for s in spikes),
                            ", ".join(f"{g.label}: {s.text(lambda v: f'{v:.2g}')} x" for g, s in zip(spiky, spikes))))
    return checks


def _rank(groups: List[ValueGroup]) -> List[Check]:
    done = _done(groups)
    if len(done) < 2:
        return []
    losses = [g.spread(_best_eval_loss) for g in done]
    memory = [g.spread(_peak_memory) for g in done]
    return [
        Check("eval loss nearly identical across ranks (within 20 % of their mean)", _alike(losses, 0.2),
              f"best eval loss {_series(done, _best_eval_loss)} (means {_apart(losses):.0%} apart)"),
        Check("higher rank, lower grad_norm (median over the run falls as r grows)",
              _falls([g.spread(_median_grad_norm) for g in done]),
              f"median grad_norm {_series(done, _median_grad_norm)}"),
        Check("memory barely changes (peak within 10 %)", _alike(memory, 0.1),
              f"peak memory MB ({_memory_kind(done)}) {_series(done, _peak_memory)} "
              f"(means {_apart(memory):.0%} apart)"),
    ]


def _memory_kind(groups: Sequence[ValueGroup]) -> str:
    return groups[0].finished[0].summary.memory_kind or "n/a"


def _alpha(groups: List[ValueGroup]) -> List[Check]:
    done = {g.number: g for g in _done(groups)}
    if 16 not in done or 32 not in done:
        return []
    low, high = done[16], done[32]

    def final(r: Run) -> Optional[float]:
        return r.losses[-1] if r.losses else None

    return [Check("alpha 16 converges better than 32 (lower best eval loss)",
                  below(low.spread(_best_eval_loss), high.spread(_best_eval_loss)),
                  f"best eval loss alpha 16: {_text(low.spread(_best_eval_loss))}, alpha 32: "
                  f"{_text(high.spread(_best_eval_loss))}; final train loss {_text(low.spread(final))} vs "
                  f"{_text(high.spread(final))}")]


def _little_effect(groups: List[ValueGroup]) -> List[Check]:
    done = _done(groups)
    if len(done) < 2:
        return []
    losses = [g.spread(_best_eval_loss) for g in done]
    return [Check("little effect on eval loss (within 20 % of their mean)", _alike(losses, 0.2),
                  f"best eval loss {_series(done, _best_eval_loss)} (means {_apart(losses):.0%} apart)")]


STUDY_MODULE_SETS = ["all-linear", "attention", "qk"]  # what the study compared, most modules first (not mlp)


def _step_time(run: Run) -> float:
    return run.summary.steps_time_s / max(run.summary.steps, 1)


def _target_modules(groups: List[ValueGroup]) -> List[Check]:
    by_set = {g.label: g for g in _done(groups)}
    compared = [by_set[name] for name in STUDY_MODULE_SETS if name in by_set]
    if len(compared) < 2:
        return []
    times = [g.spread(_step_time) for g in compared]
    per_set = [f"{g.label} ({g.finished[0].summary.trainable_params / 1e6:.2f}M params): "
               f"{t.text(lambda v: f'{v:.2f}')} s" for g, t in zip(compared, times)]
    return [*_little_effect(compared),
            Check("fewer trained modules, faster steps (train time per step falls from all-linear to qk)",
                  _falls(times), ", ".join(per_set))]


def _epoch_losses(run: Run) -> Dict[int, float]:
    """Eval loss at the end of each epoch (the evaluation before training left out)."""
    return {round(e["epoch"]): e["loss"] for e in run.evals if e.get("epoch")}


def _epochs(groups: List[ValueGroup]) -> List[Check]:
    longest = max(_done(groups), key=lambda g: g.number, default=None)
    if longest is None or min(len(_epoch_losses(r)) for r in longest.finished) < 2:
        return []
    curves = [_epoch_losses(r) for r in longest.finished]
    by_epoch = {epoch: Spread(tuple(c[epoch] for c in curves if epoch in c)) for epoch in sorted(curves[0])}
    table = ", ".join(f"{epoch}: {loss.text(format_plain)}" for epoch, loss in by_epoch.items())
    best_epoch = Spread(tuple(float(min(c, key=c.get)) for c in curves))
    rise = Spread(tuple(c[max(c)] / min(c.values()) for c in curves))
    checks = [Check("eval loss is best within ~5 epochs (each seed's best epoch)", _under(best_epoch, 5.5),
                    f"eval loss by epoch of the {longest.label} run: {table}; "
                    f"best epoch {best_epoch.text(format_plain)}"),
              Check(f"more epochs hurt generalisation (eval loss after epoch {max(by_epoch)} over 5 % above its "
                    "best)", _over(rise, 1.05), f"last over best {rise.text(lambda v: f'{v:.3g}')} x")]
    fewer = [g for g in _done(groups) if g.number <= 5 and g.spread(_test_accuracy)]
    if fewer and longest.number > 5 and longest.spread(_test_accuracy):
        best = max(fewer, key=lambda g: g.spread(_test_accuracy).mean)
        checks.append(Check(f"{longest.label} epochs end with a lower test accuracy than the best of ~5 or fewer "
                            f"({best.label})", below(longest.spread(_test_accuracy), best.spread(_test_accuracy)),
                            f"test accuracy {_series(_done(groups), _test_accuracy)}"))
    return checks


def _batch_size(groups: List[ValueGroup]) -> List[Check]:
    done = _done(groups)
    if len(done) < 2:
        return []
    return [
        Check("larger batch, smoother loss (mean step-to-step change falls)",
              _falls([g.spread(_loss_jitter) for g in done]), f"loss jitter {_series(done, _loss_jitter)}"),
        Check("larger batch, shorter wall time", _falls([g.spread(_train_time) for g in done]),
              f"train time s {_series(done, _train_time)}"),
        Check("larger batch, more memory", _rises([g.spread(_peak_memory) for g in done]),
              f"peak memory MB ({_memory_kind(done)}) {_series(done, _peak_memory)}"),
    ]


def _grad_accum(groups: List[ValueGroup]) -> List[Check]:
    done = _done(groups)
    if len(done) < 2:
        return []
    low, high = done[0], done[-1]
    step = min(len(r.losses) for r in high.finished)  # both after as many optimizer steps as the larger made

    def at_step(r: Run) -> Optional[float]:
        return r.losses[step - 1] if len(r.losses) >= step else None

    def steps(r: Run) -> Optional[int]:
        return r.summary.steps

    return [
        Check("more accumulation, fewer optimizer steps for the same samples",
              below(high.spread(steps), low.spread(steps)), f"steps {_series(done, steps)}"),
        Check(f"more accumulation converges in fewer steps (lower loss at step {step})",
              below(high.spread(at_step), low.spread(at_step)),
              f"train loss at step {step}: {low.label}: {_text(low.spread(at_step))}, {high.label}: "
              f"{_text(high.spread(at_step))}"),
        Check("more accumulation, smoother loss (mean step-to-step change)",
              below(high.spread(_loss_jitter), low.spread(_loss_jitter)),
              f"loss jitter {_series(done, _loss_jitter)}"),
    ]


def _best_lr_by_rank(groups: Sequence[ValueGroup], scaling: str) -> Dict[int, List[ValueGroup]]:
    """A rank x lr sweep's completed points of one `lora.scaling`: per rank, its lrs ordered by mean eval loss."""
    by_rank: Dict[int, List[ValueGroup]] = {}
    for group in _done(groups):
        values = group.runs[0].values
        if values.get("lora.scaling", "standard") == scaling:
            by_rank.setdefault(int(values["lora.r"]), []).append(group)
    return {rank: sorted(points, key=lambda g: g.spread(_best_eval_loss).mean) for rank, points in
            sorted(by_rank.items()) if all(g.spread(_best_eval_loss) for g in points)}


def _lr_of(group: ValueGroup) -> float:
    return float(group.runs[0].values["optim.lr"])


def _lr_moves(by_rank: Dict[int, List[ValueGroup]]) -> str:
    """Whether the best lr differs between ranks beyond seed noise: FAILED where one lr is best at every rank,
    NOISE where one lr is best or within the seeds of the best at every rank, HELD where every lr loses beyond
    noise at some rank."""
    def standing(lr: float) -> set:
        outcomes = set()
        for points in by_rank.values():
            at = next((g for g in points if _lr_of(g) == lr), None)
            if at is None:
                return {HELD}
            outcomes.add("best" if at is points[0] else below(points[0].spread(_best_eval_loss),
                                                                 at.spread(_best_eval_loss)))
        return outcomes

    standings = [standing(lr) for lr in {_lr_of(g) for points in by_rank.values() for g in points}]
    if {"best"} in standings:
        return FAILED
    return NOISE if any(HELD not in outcomes for outcomes in standings) else HELD


def _best_lrs_text(by_rank: Dict[int, List[ValueGroup]]) -> str:
    return "; ".join(f"r={rank}: best lr {format_plain(_lr_of(points[0]))} ({_text(points[0].spread(_best_eval_loss))})"
                     + (f", then {format_plain(_lr_of(points[1]))} ({_text(points[1].spread(_best_eval_loss))})"
                        if len(points) > 1 else "") for rank, points in by_rank.items())


def _rank_lr(groups: List[ValueGroup]) -> List[Check]:
    checks = []
    rslora, standard = _best_lr_by_rank(groups, "rslora"), _best_lr_by_rank(groups, "standard")
    if len(standard) > 1:
        checks.append(Check("standard scaling (alpha / r): the best lr moves with the rank (eval loss)",
                            _lr_moves(standard), _best_lrs_text(standard)))
    if len(rslora) > 1:
        moves = _lr_moves(rslora)
        checks.append(Check("rsLoRA (alpha / sqrt(r)): the same best lr at every rank (eval loss)",
                            {HELD: FAILED, FAILED: HELD}.get(moves, NOISE), _best_lrs_text(rslora)))
    return checks


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
    # several keys: their sorted names joined by " x "
    "lora.r x lora.scaling x optim.lr": Finding(
        "rank x learning rate, standard vs rsLoRA", "Not in the study (sweeps/rank_lr.yaml): with alpha / r the best "
        "lr moves with the rank; rsLoRA's alpha / sqrt(r) keeps it in place (Kalajdzievski 2023).", _rank_lr),
}
