"""Training steps through decoder layers compiled with torch.compile (`train.compile`).

A step of a LoRA trial at a sweep's batch sizes launches tens of thousands of small kernels (benchmarks/step_ops.py:
10,310 aten operations a step on SmolLM2, 96,294 on the 7B structure); compiled, a layer's element-wise work fuses
into a few kernels (`step_ops.py --profiler`, fp32 as a GPU runs: 0.63x the stock pipeline's calls a step on
SmolLM2 and 0.45x on the 7B structure, against 0.97x and 1.14x eager). Every decoder layer of a model has the
same code, so the layers share one compiled graph, with the sequence length symbolic (`dynamic=True`): a trial
compiles a bounded number of graphs whatever its batches' lengths (2 without a shared prefix: the first layer's input
needs no gradient; 4 with one: the prefix's pass of one row, and the rows' pass), and a later trial of the process
with the same structure reuses them (torch keeps them per code object, and inductor caches its kernels on disk). A
batch's shared prefix (ftharness/trial/loss.py) reaches the layers as a KV cache that they index by their number;
each layer's call is handed its own part of it (LayerCache), which keeps the number out of the graph.

Only the training steps run compiled: evaluation and generation (no gradients; generation's cache grows a token at a
time) stay eager. Measured on this 2-core Xeon (SmolLM2, the study's batches of 8, bf16 autocast, 24-step trials
interleaved in one process, medians of 3 rounds after the round that compiled; docs/speed.md): 1.12 s a step
compiled against 1.53 eager with the prefix shared (0.74x), 1.16 against 1.47 without (0.79x), after 28-35 s of
compiling with inductor's disk cache warm (69 s cold). `auto` compiles a trial long enough to repay that
(PAYS_FROM_STEPS), on any device: a GPU's figures are estimates until benchmarks/gpu_profile.py's `compiled` variants
have run on one.

Where torch cannot compile (no C++ compiler, an operation dynamo does not trace, a backend error, in the forward
graph or the backward one), the trial runs eager and the console says so once a process.
"""

import functools
import logging
from typing import Any, Callable, List, Optional

import torch
from transformers import TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

from ftharness.ui.console import say

log = logging.getLogger(__name__)

BACKEND: Any = "inductor"  # torch.compile's backend (a test swaps in one that fails)
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)  # dynamo's and inductor's (InductorError, a subclass)
PAYS_FROM_STEPS = 200  # `auto`: a trial this long repays its compile. On this CPU (SmolLM2) a compile took 28-35 s
# (69 s cold) and saved ~0.35 s of a ~1.5 s step: repaid after 100-200 steps; on a GPU it would repay ~50 s if it
# saved ~0.25 s of the study trial's 0.47 s step (docs/speed.md), i.e. halved its launches: an estimate, not measured
GRAPHS_PER_PROCESS = 64  # torch's recompile limit for the layers' code: each adapter structure of a sweep (rank,
# targets, dropout) compiles 2 to 4 graphs, and past torch's default of 8 its later trials would run eager unannounced
_failure: List[str] = []  # why compiling failed in this process: later trials do not try again


def compiles(setting: Any, steps: int, quantized: bool = False) -> bool:
    """Whether a trial of `steps` optimizer steps trains compiled: `train.compile` true, or auto for a trial long
    enough to repay the compile (PAYS_FROM_STEPS) on an unquantized base (bitsandbytes' 4-bit layers compiled on the
    CPU, docs/speed.md, but are untried under the compiler on a GPU)."""
    return setting is True or (setting == "auto" and steps >= PAYS_FROM_STEPS and not quantized)


def compile_seconds() -> float:
    """The seconds this process has spent compiling (dynamo's and the backend's, forward and backward)."""
    return torch._dynamo.utils.calculate_time_spent().get("total_wall_time", 0.0)


def decoder_layers(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The repeated blocks of a transformers model (its GradientCheckpointingLayer subclasses)."""
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


class CompiledSteps(TrainerCallback):
    """Swaps the model's decoder layers to their compiled call for each optimizer step's micro-batches and back
    after it, so that the evaluations between steps run eager, when `compiles` says so for the trial's steps;
    `seconds` is the compile time the trial paid (None when it trained eager)."""

    def __init__(self, model: torch.nn.Module, setting: Any, quantized: bool):
        self.model, self.setting, self.quantized = model, setting, quantized
        self.layers: List[torch.nn.Module] = []
        self.compiled: List[Callable] = []
        self.seconds: Optional[float] = None
        self._started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if compiles(self.setting, state.max_steps, self.quantized) and not _failure:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, GRAPHS_PER_PROCESS)
            torch._functorch.config.force_non_lazy_backward_lowering = True  # a backward that cannot compile fails
            # the layer's first forward call, where the trial falls back to eager, not its first backward, mid-step
            self.layers = decoder_layers(self.model)
            self.compiled = [_with_its_cache_layer(_eager_on_failure(
                torch.compile(layer._call_impl, dynamic=True, backend=BACKEND), layer._call_impl), cache_number(layer))
                for layer in self.layers]
            self._started = compile_seconds()
            _say_first_compile()

    def on_step_begin(self, args, state, control, **kwargs):
        for layer, call in zip(self.layers, self.compiled):
            layer._compiled_call_impl = None if _failure else call  # nn.Module.compile's own hook

    def on_step_end(self, args, state, control, **kwargs):
        self.eager()

    def on_train_end(self, args, state, control, **kwargs):
        if not self.layers:
            return
        self.eager()
        self.seconds = None if _failure else round(compile_seconds() - self._started, 2)
        if self.seconds and self.seconds >= 1:
            log.info("train.compile: %.1f s compiling the decoder layers (reused by a later trial of this process with "
                     "the same adapter structure)", self.seconds)

    def eager(self) -> None:
        for layer in self.layers:
            layer._compiled_call_impl = None


class LayerCache:
    """One decoder layer's part of a model's KV cache, as that layer's compiled call sees it. A layer hands the
    model's cache its keys and values with its number (`update(keys, values, layer_idx)`); traced, that number is a
    constant of the graph, so each layer would compile a graph of its own (30 on SmolLM2, past torch's recompile
    limit). Given only its own cache layer, every layer's call traces to the same graph. Whatever else a layer asks
    of the cache goes to the whole cache, with the layer's own number."""

    def __init__(self, cache: Any, number: int):
        self._cache, self._layer = cache, cache.layers[number]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self._layer.update(key_states, value_states, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


def cache_number(layer: torch.nn.Module) -> Optional[int]:
    """The number a decoder layer hands the KV cache with its keys and values: its modules' `layer_idx` (transformers'
    attention modules keep it), None where they hold none or several."""
    numbers = {module.layer_idx for module in layer.modules() if isinstance(getattr(module, "layer_idx", None), int)}
    return numbers.pop() if len(numbers) == 1 else None


def _with_its_cache_layer(call: Callable, number: Optional[int]) -> Callable:
    """`call`, a decoder layer's, handed its LayerCache where it is given the model's KV cache (a batch's shared
    prefix, ftharness/trial/loss.py: the prefix's pass writes it, the rows' pass reads it). A layer whose number is
    not known gets the whole cache: right, at the cost of a graph of its own."""
    @functools.wraps(call)
    def with_its_layer(*args, **kwargs):
        cache = kwargs.get("past_key_values")
        if number is not None and len(getattr(cache, "layers", ())) > number:
            kwargs["past_key_values"] = LayerCache(cache, number)
        return call(*args, **kwargs)

    return with_its_layer


@functools.cache
def _say_first_compile() -> None:
    """One console line a process, before the first compiled step: it would otherwise look stalled for a minute."""
    say("train.compile: the first training step compiles the decoder layers (~1 min on a CPU; later trials with the "
        "same adapter structure reuse them)")


def _eager_on_failure(compiled: Callable, eager: Callable) -> Callable:
    """`compiled`, or `eager` from the first failure to compile on (said once a process): a failure is raised
    while tracing or compiling, before any of the call ran, so the eager call does it all once."""
    @functools.wraps(eager)
    def call(*args, **kwargs):
        if not _failure:
            try:
                return compiled(*args, **kwargs)
            except COMPILE_ERRORS as error:
                cause = getattr(error, "inner_exception", None) or error  # the backend's own error, if it raised
                _failure.append(f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}")
                log.warning("train.compile: torch.compile failed (%s); training runs eager", _failure[0])
        return eager(*args, **kwargs)

    return call
