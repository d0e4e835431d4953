"""sdpa masks without host syncs (ftharness/model/sdpa_masks.py): the same attention as transformers' own masks, with
no value read back from the device, and a batch without padding left without a mask by the training collator."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ftharness.model.sdpa_masks import use_sdpa_masks_without_syncs
from ftharness.trial.loss import with_host_facts


class ScalarReads(TorchDispatchMode):
    """Counts the operations that read a value back to the host (a sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def logits(model, ids, mask):
    with torch.no_grad(), ScalarReads() as reads:
        out = model(input_ids=ids, attention_mask=mask).logits
    return out, reads.count


def test_a_padded_batch_attends_as_with_transformers_masks_without_reading_anything_back():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=100, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    ids, mask = torch.randint(0, 100, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # the second row right-padded
    AttentionMaskInterface.register("sdpa", sdpa_mask)  # transformers' own
    expected, stock_reads = logits(model, ids, mask)
    use_sdpa_masks_without_syncs()
    padded, reads = logits(model, ids, mask)
    unpadded, unpadded_reads = logits(model, ids, None)  # what the collator sends for a batch without padding
    assert stock_reads == 2 and reads == unpadded_reads == 0  # transformers checks whether it may skip the mask
    kept = mask.bool()
    assert torch.allclose(padded[kept], expected[kept], atol=1e-6)
    assert torch.allclose(unpadded[0], expected[0], atol=1e-6)  # the first row has no padding: causal alone


def test_the_training_collator_leaves_the_mask_out_of_a_batch_without_padding():
    def collator(features):
        rows = [torch.tensor(f) for f in features]
        width = max(len(row) for row in rows)
        mask = torch.stack([torch.arange(width) < len(row) for row in rows]).long()
        ids = torch.stack([torch.nn.functional.pad(row, (0, width - len(row))) for row in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}

    collate = with_host_facts(collator)
    assert "attention_mask" not in collate([[1, 2, 3], [4, 5, 6]])
    padded = collate([[1, 2, 3], [4, 5]])
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]] and padded["num_tokens"] == 5
