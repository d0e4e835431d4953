"""Base reuse across trials, adapters, scoring and one in-process trial, on the tiny model."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import set_seed

from conftest import compose_config, read_jsonl
from ftharness.contract import Objective
from ftharness.data.synthetic import decimal_comparisons
from ftharness.data.tokenization import encode_chat, reply_spans
from ftharness.model import lean_lora
from ftharness.model.adapters import attach_adapter, detach_adapter
from ftharness.model.embedded import resolve_model_path
from ftharness.model.hardware import resolve_hardware
from ftharness.model.lean_lora import CpuDropout
from ftharness.model.loading import forget_base, load_base
from ftharness.trial import loss, recipe
from ftharness.trial.evaluation import candidate_accuracy, reply_log_likelihoods
from ftharness.trial.recipe import run_trial


def _load(cfg):
    return load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_detached_adapter_leaves_the_cached_base_as_freshly_loaded():
    cfg = compose_config()
    forget_base()
    model, _, _ = _load(cfg)
    ids = torch.arange(3, 40).unsqueeze(0)
    fresh = _logits(model, ids)
    set_seed(0)
    adapted = attach_adapter(model, cfg)
    torch.nn.init.normal_(adapted.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    assert not torch.allclose(_logits(adapted, ids), fresh)
    detach_adapter(adapted)
    again, _, _ = _load(cfg)
    assert again is model  # reused, not reloaded
    assert torch.equal(_logits(again, ids), fresh)
    assert not any("lora" in name for name, _ in again.named_modules())


def test_scores_do_not_depend_on_batching_and_accuracy_counts_the_best_candidate():
    cfg = compose_config()
    model, tokenizer, _ = _load(cfg)
    rows = decimal_comparisons(6, seed=3)
    chats = [r["messages"] for r in rows]
    one_by_one = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=1, batch_tokens=10_000)
    batched = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=4, batch_tokens=10_000)
    by_tokens = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=32, batch_tokens=60)  # ~2 rows a batch
    assert batched == pytest.approx(one_by_one, abs=1e-4) and by_tokens == pytest.approx(one_by_one, abs=1e-4)
    best = [max(range(2), key=lambda i: reply_log_likelihoods(
        model, tokenizer, [r["messages"][:-1] + [{"role": "assistant", "content": c}] for c in r["candidates"]],
        128, 8, 10_000)[i]) for r in rows]
    expected = sum(b == r["label"] for b, r in zip(best, rows)) / len(rows)
    assert candidate_accuracy(model, tokenizer, rows, compose_config("eval.batch_size=5")) == expected


def _trial(tmp_path: Path, name: str, *overrides: str) -> dict:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return run_trial(compose_config(*overrides), run_dir, name, {})


def test_a_trial_writes_its_results_and_repeats_exactly_on_the_reused_base(tmp_path):
    forget_base()
    first = _trial(tmp_path, "first")
    second = _trial(tmp_path, "second")  # same process: the base is reused, the result must not change
    forget_base()
    third = _trial(tmp_path, "third")  # a fresh load
    losses = [[r["loss"] for r in read_jsonl(tmp_path / n / "metrics.jsonl") if r["kind"] == "train"]
              for n in ("first", "second", "third")]
    assert losses[0] == losses[1] == losses[2] and len(losses[0]) == 4
    assert first.objective.value == second.objective.value == third.objective.value

    records = read_jsonl(tmp_path / "first" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["learning_rate"] is not None for r in train)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 4]
    assert first.status == "completed" and first.steps == 4
    assert first.objective == Objective("eval_loss", "minimize", first.after["eval_loss"])
    assert 0 <= first.before["test_accuracy"] <= 1 and 0 <= first.after["test_accuracy"] <= 1
    assert 0 < first.trainable_params < first.total_params and first.peak_memory_mb > 0
    assert json.loads((tmp_path / "first" / "summary.json").read_text()) == first.as_dict()
    assert (tmp_path / "first" / "adapter" / "adapter_model.safetensors").is_file()
    assert len(json.loads((tmp_path / "first" / "generations.json").read_text())) == 3


def test_a_trial_in_another_precision_measures_the_base_anew(tmp_path):
    """A sweep over train.precision: each precision's "before" figures are the base's in that precision."""
    forget_base()
    recipe._base_results.clear()
    fp32 = _trial(tmp_path, "fp32", "train.precision=fp32", "train.max_steps=1")
    bf16_after_fp32 = _trial(tmp_path, "bf16", "train.precision=bf16", "train.max_steps=1")
    recipe._base_results.clear()
    bf16_alone = _trial(tmp_path, "bf16-alone", "train.precision=bf16", "train.max_steps=1")
    forget_base()
    assert bf16_after_fp32.before == bf16_alone.before
    assert bf16_after_fp32.before["eval_loss"] != fp32.before["eval_loss"]
    step0 = [next(r["loss"] for r in read_jsonl(tmp_path / n / "metrics.jsonl") if r["kind"] == "eval")
             for n in ("fp32", "bf16", "bf16-alone")]
    assert step0[1] == step0[2] != step0[0]  # the curves' first point too


def test_full_finetuning_trains_every_weight_and_never_leaks_into_the_next_trial(tmp_path):
    forget_base()
    ids = torch.arange(3, 40).unsqueeze(0)
    before = _logits(_load(compose_config())[0], ids)
    _trial(tmp_path, "lora", "train.max_steps=1")  # peft froze the reused base's weights
    summary = _trial(tmp_path, "full", "lora=none", "train.max_steps=2")
    assert summary.trainable_params == summary.total_params
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()
    assert torch.equal(_logits(_load(compose_config())[0], ids), before)  # the trained base was dropped


def test_qlora_trial_runs_on_a_4bit_base(tmp_path):
    forget_base()
    summary = _trial(tmp_path, "qlora", "lora=qlora", "train.max_steps=2")
    forget_base()
    assert summary.status == "completed" and summary.steps == 2


def test_a_candidate_takes_the_last_reply_s_place_and_only_it_is_scored_after_the_whole_dialogue():
    cfg = compose_config()
    model, tokenizer, _ = _load(cfg)
    history = [{"role": "user", "content": "Is 0.5 larger than 0.45?"},
               {"role": "assistant", "content": "Yes, 0.5 is larger than 0.45."},
               {"role": "user", "content": "And 0.3 or 0.25?"}]
    row = {"messages": [*history, {"role": "assistant", "content": "0.3 is larger."}],
           "candidates": ["0.3 is larger.", "0.25 is larger."], "label": 0}
    chats = [[*history, {"role": "assistant", "content": c}] for c in row["candidates"]]
    scores = reply_log_likelihoods(model, tokenizer, chats, 256, 8, 10_000, share_prefix=True, groups=[0, 0])
    for chat, score in zip(chats, scores):
        ids = encode_chat(tokenizer, chat, 256)["input_ids"]
        start, end = reply_spans(tokenizer, chat, ids)[-1]
        log_probs = torch.log_softmax(_logits(model, torch.tensor([ids]))[0].float(), dim=-1)
        assert score == pytest.approx(sum(log_probs[t - 1, ids[t]].item() for t in range(start, end)), abs=1e-3)
    assert candidate_accuracy(model, tokenizer, [row], cfg) == float(scores[0] > scores[1])


def test_candidates_cut_off_before_their_reply_score_zero_in_a_grouped_batch():
    cfg = compose_config()
    model, tokenizer, _ = _load(cfg)
    row = decimal_comparisons(1, seed=5)[0]
    chats = [[*row["messages"][:-1], {"role": "assistant", "content": c}] for c in row["candidates"]]
    assert reply_log_likelihoods(model, tokenizer, chats, 10, 8, 10_000, share_prefix=True, groups=[0, 0]) == [0.0, 0.0]


def test_rows_cut_off_before_their_reply_are_dropped_and_counted(tmp_path):
    summary = _trial(tmp_path, "short", "data.max_length=54", "train.max_steps=1")
    assert 0 < summary.data["dropped_no_reply"] < summary.data["train"] + summary.data["eval"]


def test_the_loaded_base_is_frozen_out_of_the_garbage_collector_until_it_is_dropped():
    """A full collection skips what lives as long as the base; a dropped base must become collectable again."""
    import gc
    import weakref

    forget_base()
    model = _load(compose_config())[0]
    assert gc.get_freeze_count() > 0
    dropped = weakref.ref(model)
    del model
    forget_base()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert dropped() is None


def test_cpu_dropout_keeps_the_same_share_scaled_and_passes_gradients_through_the_kept_values():
    torch.manual_seed(0)
    dropout = CpuDropout(0.05)
    x = torch.ones(1000, 1001, requires_grad=True)  # an odd count: the mask's last 64-bit draw is cut
    y = dropout(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.95, abs=0.002)
    assert torch.allclose(y[kept], torch.tensor(1 / 0.95))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.equal(dropout.eval()(x), x)


def test_an_adapter_on_the_cpu_takes_cpu_dropout():
    cfg = compose_config("lora.dropout=0.1")
    adapted = attach_adapter(_load(cfg)[0], cfg)
    try:
        dropouts = [d for m in adapted.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
                    for d in m.lora_dropout.values()]
        assert dropouts and all(type(d) is CpuDropout and d.p == 0.1 for d in dropouts)
    finally:
        detach_adapter(adapted)


def _peft_forward(monkeypatch, adapted):
    """Route every LoRA layer back through peft's own forward (what attach_adapter replaces for inference)."""
    for module in adapted.modules():
        if type(module) is LoraLinear:
            monkeypatch.setattr(module, "forward", LoraLinear.forward.__get__(module))


def _random_update(adapted):
    for module in adapted.modules():
        if type(module) is LoraLinear:
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)


def test_the_lean_lora_forward_gives_peft_s_logits_loss_and_gradients(monkeypatch):
    """In evaluation (fp32, and under bf16 autocast as close to fp32 as peft) and in training with dropout: the
    same masks (the same seed) give peft's loss and gradients."""
    cfg = compose_config("lora.dropout=0.3")
    set_seed(0)
    adapted = attach_adapter(_load(cfg)[0], cfg)
    try:
        _random_update(adapted)
        layers = [m for m in adapted.modules() if type(m) is LoraLinear]
        assert layers and all(m.forward.__func__ is lean_lora._lean_lora_forward for m in layers)
        ids = torch.arange(3, 40).unsqueeze(0)

        def run():
            adapted.eval()
            logits = _logits(adapted, ids)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits_autocast = _logits(adapted, ids)
            adapted.train()
            adapted.zero_grad()
            torch.manual_seed(1)  # the same dropout masks in both training forwards
            loss = adapted(input_ids=ids, labels=ids).loss
            loss.backward()
            grads = [p.grad.clone() for p in adapted.parameters() if p.requires_grad]
            return logits, logits_autocast, loss.item(), grads

        ours, ours_autocast, loss_ours, grads_ours = run()
        with monkeypatch.context() as patch:
            _peft_forward(patch, adapted)
            peft, peft_autocast, loss_peft, grads_peft = run()
        adapted.eval()
        with adapted.disable_adapter():
            assert not torch.allclose(ours, _logits(adapted, ids))  # the update counts
        assert torch.allclose(ours, peft, atol=1e-5)
        # under autocast both round in bf16, in a different order: each as far from the fp32 logits as the other
        error_ours, error_peft = [(logits.float() - ours).abs() for logits in (ours_autocast, peft_autocast)]
        assert error_ours.mean() < 1.25 * error_peft.mean() and error_ours.max() < 0.1 * ours.abs().max()
        assert loss_ours == pytest.approx(loss_peft, rel=1e-6)
        assert all(torch.allclose(o, p, atol=1e-4 * p.abs().max()) for o, p in zip(grads_ours, grads_peft))
        assert any(g.abs().sum() > 0 for g in grads_ours)
    finally:
        detach_adapter(adapted)


def _share_of_update_kept(output: torch.Tensor, base: torch.Tensor, update: torch.Tensor) -> float:
    """How much of `update` the output carries on average: the slope of (output - base) over update."""
    moved = output.float() - base
    return ((moved * update).sum() / (update ** 2).sum()).item()


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_an_update_below_half_a_bf16_step_still_moves_a_bf16_layer_under_autocast(monkeypatch, training, bias):
    """peft adds the LoRA update to the base's product after rounding it to bf16, which drops updates below
    half a bf16 step: a fresh adapter at a low learning rate would barely change the loss. The lean forward adds
    it before the rounding, so on average the whole update counts, also beside a bias as large as the product
    (Qwen's q/k/v)."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=bias)).to(torch.bfloat16)
    if bias:
        torch.nn.init.normal_(base[0].bias, std=2.0)
    adapted = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["0"]))
    lean_lora.use_lean_lora_forward(adapted)
    layer, = [m for m in adapted.modules() if type(m) is LoraLinear]
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=1e-4)  # a fresh adapter after a few small steps
    x = torch.randn(64, 256).to(torch.bfloat16)
    exact_base = x.float() @ layer.base_layer.weight.float().t()
    if bias:
        exact_base = exact_base + layer.base_layer.bias.float()
    exact_update = layer.scaling["default"] * (x.float() @ layer.lora_A["default"].weight.t()
                                              @ layer.lora_B["default"].weight.t())
    adapted.train(training)

    def output():
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(training):
            return adapted(x)

    ours = _share_of_update_kept(output(), exact_base, exact_update)
    with monkeypatch.context() as patch:
        _peft_forward(patch, adapted)
        peft = _share_of_update_kept(output(), exact_base, exact_update)
    assert ours == pytest.approx(1.0, abs=0.1) and peft < 0.5, (ours, peft)


def test_on_a_base_with_a_bias_the_lean_forward_gives_peft_s_output_and_gradients(monkeypatch):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(32, 48, bias=True))
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["0"]))
    lean_lora.use_lean_lora_forward(adapted)
    _random_update(adapted)
    x = torch.randn(2, 5, 32, requires_grad=True)

    def output_and_input_grad():
        x.grad = None
        y = adapted(x)
        y.square().sum().backward()
        return y.detach(), x.grad.clone()

    ours = output_and_input_grad()
    with monkeypatch.context() as patch:
        _peft_forward(patch, adapted)
        peft = output_and_input_grad()
    assert all(torch.allclose(o, p, atol=1e-5) for o, p in zip(ours, peft))


def test_lora_inference_on_a_bf16_base_scores_candidates_as_peft_s_fp32_update_does(monkeypatch):
    cfg = compose_config()
    model, tokenizer, _ = _load(cfg)
    rows = decimal_comparisons(6, seed=3)
    chats = [r["messages"] for r in rows]
    set_seed(0)
    adapted = attach_adapter(model.to(torch.bfloat16), cfg)
    try:
        _random_update(adapted)
        ours = reply_log_likelihoods(adapted, tokenizer, chats, 128, batch_size=4, batch_tokens=10_000)
        with monkeypatch.context() as patch:
            _peft_forward(patch, adapted)
            peft = reply_log_likelihoods(adapted, tokenizer, chats, 128, batch_size=4, batch_tokens=10_000)
        assert ours == pytest.approx(peft, rel=2e-3)  # bf16 against fp32 updates: 3e-4 apart here
    finally:
        detach_adapter(adapted)
        model.float()
        forget_base()


def test_candidate_scores_are_the_same_with_the_shared_prefix_run_once(monkeypatch):
    cfg = compose_config()
    model, tokenizer, _ = _load(cfg)
    system = "Compare the decimals digit by digit."
    chats = [r["messages"] for r in decimal_comparisons(6, seed=3, system_prompt=system)]
    alone = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=8, batch_tokens=10_000)
    starts, states = [], loss.decoder_states
    monkeypatch.setattr(loss, "decoder_states", lambda *a: starts.append(states(*a)[1]) or states(*a))
    shared = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=8, batch_tokens=10_000, share_prefix=True)
    assert starts and min(starts) >= loss.MIN_SHARED_PREFIX  # the system prompt ran once per batch
    assert shared == pytest.approx(alone, abs=1e-4)


def test_candidates_that_share_their_question_score_the_same_with_its_prompt_run_once(monkeypatch):
    cfg = compose_config()
    model, tokenizer, _ = _load(cfg)
    rows = decimal_comparisons(5, seed=4, system_prompt="Compare the decimals digit by digit.")
    rows[2]["candidates"] = rows[2]["candidates"][:1]  # a question with one candidate
    rows[3]["candidates"] = [*rows[3]["candidates"], "I cannot tell which one is larger."]  # one with three
    rows[4]["messages"] = [{"role": "user", "content": "Two decimals now, " + rows[4]["messages"][0]["content"]},
                           *rows[4]["messages"][1:]]  # prompts of other lengths
    chats, groups = [], []
    for number, row in enumerate(rows):
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]
        chats += [prompt + [{"role": "assistant", "content": c}] for c in row["candidates"]]
        groups += [number] * len(row["candidates"])
    alone = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=1, batch_tokens=10_000)
    grouped_calls, grouped = [], loss.grouped_decoder_states
    monkeypatch.setattr(loss, "grouped_decoder_states",
                        lambda *a: grouped_calls.append(grouped(*a)) or grouped_calls[-1])
    shared = reply_log_likelihoods(model, tokenizer, chats, 128, batch_size=6, batch_tokens=10_000,
                                   share_prefix=True, groups=groups)
    assert len(grouped_calls) == 2 and all(call is not None for call in grouped_calls)  # 10 rows, 6 a batch
    assert shared == pytest.approx(alone, abs=1e-4)
    assert candidate_accuracy(model, tokenizer, rows, cfg) == pytest.approx(
        sum(max(range(len(r["candidates"])), key=lambda i: alone[sum(len(q["candidates"]) for q in rows[:n]) + i])
            == r["label"] for n, r in enumerate(rows)) / len(rows))


def test_the_embedded_model_s_first_conversion_draws_no_bar_on_the_console(tmp_path, capfd):
    path = resolve_model_path("embedded:smollm2-135m-instruct", tmp_path)
    assert (Path(path) / "config.json").is_file()
    captured = capfd.readouterr()
    assert "GGUF" not in captured.err + captured.out


@pytest.mark.parametrize("scaling,expected", [("standard", 32 / 16), ("rslora", 32 / 16 ** 0.5)])
def test_lora_scaling_sets_peft_s_scale_of_every_adapted_layer(scaling, expected):
    cfg = compose_config(f"lora.scaling={scaling}", "lora.r=16", "lora.alpha=32")
    adapted = attach_adapter(_load(cfg)[0], cfg)
    try:
        scales = [layer.scaling["default"] for layer in adapted.modules() if isinstance(layer, LoraLinear)]
        assert scales and scales == pytest.approx([expected] * len(scales))
    finally:
        detach_adapter(adapted)
