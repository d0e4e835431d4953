"""The labelled-positions loss equals the stock causal-LM loss, with and without gradients, padded or packed."""

from pathlib import Path

import pytest
import torch
from transformers import set_seed

from conftest import compose_config
from ftharness.hardware import resolve_hardware
from ftharness.loss import labelled_loss
from ftharness.models import attach_adapter, detach_adapter, load_base


@pytest.fixture
def adapted():
    cfg = compose_config()
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
