"""The labelled-positions loss equals the stock causal-LM loss, with and without gradients, padded or packed, with
a batch's shared prefix run once or not, with either attention implementation."""

from pathlib import Path

import pytest
import torch
from transformers import set_seed

from conftest import compose_config
from ftharness.model.adapters import attach_adapter, detach_adapter
from ftharness.model.hardware import resolve_hardware
from ftharness.model.loading import load_base
from ftharness.trial.loss import (
    decoder_states,
    labelled_log_likelihoods,
    labelled_loss,
    shared_prefix_length,
    with_host_facts,
)


@pytest.fixture(params=["sdpa", "eager"])  # eager: the CPU's choice for short rows under bf16
def adapted(request):
    cfg = compose_config(f"model.attention={request.param}")
    model, _, _ = load_base(cfg, resolve_hardware(cfg), Path(cfg.cache_dir))
    set_seed(0)
    peft_model = attach_adapter(model, cfg)
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.1)  # a trained-looking adapter, not the no-op of a fresh one
    peft_model.eval()  # no dropout: both losses see the same network
    yield peft_model
    detach_adapter(peft_model)


def _batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (3, 16), generator=generator)
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt
    labels[2, 11:] = -100  # padding
    attention = torch.ones_like(ids)
    attention[2, 11:] = 0
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def test_the_labelled_positions_loss_equals_the_full_loss_and_its_gradients(adapted):
    batch = _batch()
    stock = adapted(**batch).loss
    stock.backward()
    stock_grads = [p.grad.clone() for p in adapted.parameters() if p.requires_grad]
    adapted.zero_grad()
    ours = labelled_loss(adapted, batch)
    ours.backward()
    assert ours.item() == pytest.approx(stock.item(), rel=1e-5)
    for expected, got in zip(stock_grads, (p.grad for p in adapted.parameters() if p.requires_grad)):
        assert torch.allclose(expected, got, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert labelled_loss(adapted, batch).item() == pytest.approx(stock.item(), rel=1e-5)


def test_a_count_from_the_trainer_normalises_over_all_micro_batches(adapted):
    batch = _batch()
    tokens = (batch["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        mean = labelled_loss(adapted, batch)
        assert labelled_loss(adapted, batch, num_items_in_batch=2 * tokens).item() == pytest.approx(mean.item() / 2)


def test_packed_rows_with_restarting_positions_match_the_stock_loss(adapted):
    ids = torch.randint(5, 40, (1, 20), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, [0, 1, 10, 11]] = -100  # each packed row starts with prompt tokens
    positions = torch.cat([torch.arange(10), torch.arange(10)]).unsqueeze(0)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    with torch.no_grad():
        assert labelled_loss(adapted, batch).item() == pytest.approx(adapted(**batch).loss.item(), rel=1e-5)


def _shared_prefix_batch(prefix: int = 10):
    """Three right-padded rows that start with the same `prefix` tokens, labels after them."""
    batch = _batch()
    batch["input_ids"][:, :prefix] = batch["input_ids"][0, :prefix]
    batch["labels"][:, :prefix + 2] = -100
    return batch


def test_a_shared_prefix_runs_once_and_gives_the_same_loss_gradients_and_row_scores(adapted):
    batch = _shared_prefix_batch()
    assert shared_prefix_length(batch) == 10
    stock = adapted(**batch).loss
    stock.backward()
    stock_grads = [p.grad.clone() for p in adapted.parameters() if p.requires_grad]
    adapted.zero_grad()
    shared = labelled_loss(adapted, batch, share_prefix=True)
    shared.backward()
    assert shared.item() == pytest.approx(stock.item(), rel=1e-5)
    for expected, got in zip(stock_grads, (p.grad for p in adapted.parameters() if p.requires_grad)):
        assert torch.allclose(expected, got, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = adapted(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        token_logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        expected = (token_logp * (targets != -100)).sum(-1)
        for share in (False, True):
            assert torch.allclose(labelled_log_likelihoods(adapted, batch, share), expected, atol=1e-4)


def test_the_shared_prefix_stops_before_the_first_label_and_is_not_used_where_it_cannot_help():
    batch = _shared_prefix_batch(prefix=12)
    batch["labels"][1, 9] = batch["input_ids"][1, 9]  # a row labelled early: position 8 predicts it
    assert shared_prefix_length(batch) == 8
    assert shared_prefix_length(_shared_prefix_batch(prefix=5)) == 0  # too short to be worth a decoder call
    assert shared_prefix_length({k: v[:1] for k, v in _shared_prefix_batch().items()}) == 0  # one row
    packed = {**_shared_prefix_batch(), "position_ids": torch.arange(16).repeat(3, 1)}
    assert shared_prefix_length(packed) == 0


def test_gradient_checkpointing_in_training_runs_every_position(adapted):
    """Checkpointed layers drop the prefix's keys and values, so the prefix is not shared there."""
    batch = _shared_prefix_batch()
    adapted.activation_checkpointing_enable()
    adapted.train()
    try:
        _, start = decoder_states(adapted, batch, share_prefix=True)
        assert start == 0
    finally:
        adapted.activation_checkpointing_disable()
        adapted.eval()
    assert decoder_states(adapted, batch, share_prefix=True)[1] == 10


@pytest.mark.parametrize("share_prefix", [False, True])
def test_the_collators_host_facts_give_the_loss_and_gradients_found_on_the_device(adapted, share_prefix):
    """Gathered at the positions the collator found on the host (fixed shapes, no host sync), as by a boolean mask."""
    batch = _shared_prefix_batch()
    facts = with_host_facts(dict)(batch)
    assert facts["num_tokens"] == int(batch["attention_mask"].sum()) and facts["shared_prefix"] == 10
    assert facts["labelled_positions"].shape == (2, int((batch["labels"][:, 1:] != -100).sum()))
    results = []
    for inputs in (batch, facts):
        adapted.zero_grad()
        loss = labelled_loss(adapted, inputs, share_prefix=share_prefix)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in adapted.parameters() if p.requires_grad]))
    (device_loss, device_grads), (host_loss, host_grads) = results
    assert host_loss == pytest.approx(device_loss, rel=1e-6)
    for expected, got in zip(device_grads, host_grads):
        assert torch.allclose(expected, got, rtol=1e-5, atol=1e-7)
