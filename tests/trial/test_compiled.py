"""Training steps through compiled decoder layers: when a trial compiles, that it trains to the eager path's curves
with a batch's shared prefix run once, that evaluations between its steps run eager, and that a compile that fails
leaves the trial eager with one line."""

import json
import logging
from pathlib import Path

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from conftest import compose_config, read_jsonl
from ftharness.contract import Status
from ftharness.model.hardware import resolve_hardware
from ftharness.model.loading import load_base
from ftharness.trial import compiled
from ftharness.trial.compiled import PAYS_FROM_STEPS, LayerCache, cache_number, compiles, decoder_layers
from ftharness.trial.recipe import run_trial

TRIAL = ("train.max_steps=4", "train.eval_steps=2", "eval.max_new_tokens=0", "lora.dropout=0")  # no dropout: the
# compiled path draws its masks with other kernels


@pytest.fixture(autouse=True)
def no_failure_yet():
    compiled._failure.clear()
    yield
    compiled._failure.clear()


@pytest.mark.parametrize("setting, steps, compiled_", [
    (True, 12, True), (False, 10_000, False),
    ("auto", 12, False),  # a study's short trial: the compile would not repay
    ("auto", PAYS_FROM_STEPS, True),
])
def test_auto_compiles_trials_long_enough_to_repay_it(setting, steps, compiled_):
    assert compiles(setting, steps) is compiled_
    assert compiles(setting, steps, quantized=True) is (setting is True)  # auto leaves a 4-bit base eager


def test_a_layer_is_handed_the_cache_layer_of_its_own_number_and_the_rest_of_the_cache_as_it_is():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2)
    layers = decoder_layers(LlamaForCausalLM(config))
    assert [cache_number(layer) for layer in layers] == [0, 1, 2] and cache_number(torch.nn.Linear(2, 2)) is None
    cache, keys = DynamicCache(config=config), torch.ones(1, 2, 5, 8)
    LayerCache(cache, 2).update(keys, keys, 0)  # the number the layer passes is not used: a graph's constant
    assert [layer.get_seq_length() for layer in cache.layers] == [0, 0, 5]
    assert LayerCache(cache, 0).get_seq_length(2) == 5  # anything else: the whole cache


def _chats_with_a_system_prompt(folder: Path) -> Path:
    """Chats whose rows share a 46-token prefix (the tiny model's tokens are characters): training shares it."""
    path = folder / "chats.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Answer with the larger number."},
                          {"role": "user", "content": f"{a}.{b} or {b}.{a}?"},
                          {"role": "assistant", "content": f"{max(a, b)}.{min(a, b)}"}]}
            for a in range(1, 9) for b in range(1, 9) if a != b]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _curves(run_dir):
    records = read_jsonl(run_dir / "metrics.jsonl")
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if r["kind"] == "train"]


def _layers_left_eager(cfg) -> bool:
    model = load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))[0]  # the cached base the trials trained
    return all(layer._compiled_call_impl is None for layer in decoder_layers(model))


def test_a_compiled_trial_trains_to_the_eager_curves_and_leaves_the_base_eager(tmp_path, capsys, monkeypatch):
    compiled._say_first_compile.cache_clear()
    data = ("data=file", f"data.path={_chats_with_a_system_prompt(tmp_path)}", "data.test_size=0",
            "train.share_prefix=true")
    eager = run_trial(compose_config(*TRIAL, *data, "train.compile=false"), tmp_path / "eager", "eager", {})
    handed = []
    monkeypatch.setattr(compiled, "LayerCache", lambda cache, n: handed.append(n) or LayerCache(cache, n))
    cfg = compose_config(*TRIAL, *data, "train.compile=true")
    summary = run_trial(cfg, tmp_path / "compiled", "compiled", {})
    assert sorted(set(handed)) == [0, 1]  # each layer got its part of the shared prefix's cache
    assert summary.compile_time_s > 0 and eager.compile_time_s is None
    assert "train.compile: the first training step compiles the decoder layers" in capsys.readouterr().out
    curves = _curves(tmp_path / "compiled")
    assert [step for step, _, _ in curves] == [1, 2, 3, 4]
    for (_, loss, norm), (_, eager_loss, eager_norm) in zip(curves, _curves(tmp_path / "eager")):
        assert loss == pytest.approx(eager_loss, rel=2e-3) and norm == pytest.approx(eager_norm, rel=2e-2)  # bf16
    assert summary.after["eval_loss"] == pytest.approx(eager.after["eval_loss"], rel=2e-3)
    assert _layers_left_eager(cfg)
    again = run_trial(cfg, tmp_path / "again", "again", {})  # the same structure: the process's graphs reused
    assert again.compile_time_s < summary.compile_time_s / 2


def _no_cpp_compiler(graph, example_inputs):
    raise RuntimeError("no C++ compiler here")


FAILING_BACKENDS = {  # a compile that fails in the forward graph, and one that fails in the backward graph only
    "forward": _no_cpp_compiler,
    "backward": aot_autograd(fw_compiler=lambda graph, example_inputs: make_boxed_func(graph.forward),
                             bw_compiler=_no_cpp_compiler),
}


@pytest.mark.parametrize("failing", FAILING_BACKENDS)
def test_a_compile_that_fails_trains_eager_and_says_so_once(tmp_path, monkeypatch, caplog, failing):
    monkeypatch.setattr(compiled, "BACKEND", FAILING_BACKENDS[failing])
    cfg = compose_config(*TRIAL, "train.compile=true")
    with caplog.at_level(logging.WARNING, logger="ftharness"):
        runs = [run_trial(cfg, tmp_path / name, name, {}) for name in ("first", "second")]
    eager = compose_config(*TRIAL, "train.compile=false")
    run_trial(eager, tmp_path / "eager", "eager", {})
    line, = [r.getMessage() for r in caplog.records if "train.compile" in r.getMessage()]
    assert line == "train.compile: torch.compile failed (RuntimeError: no C++ compiler here); training runs eager"
    for run, name in zip(runs, ("first", "second")):
        assert run.status == Status.COMPLETED and run.compile_time_s is None
        assert _curves(tmp_path / name) == _curves(tmp_path / "eager")
    assert _layers_left_eager(cfg)
