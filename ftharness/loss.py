"""The causal-LM loss from the hidden states at the labelled positions only.

The stock loss projects every position onto the vocabulary (batch x length x vocabulary logits, upcast to
fp32) although only the reply tokens carry labels, and on chat data most positions are prompt. Picking the
labelled positions first and projecting only those gives the same loss for a fraction of the lm_head's work
and memory: on a 7B model with a 100k vocabulary, the full logits of one 2048-token row are ~0.8 GB in fp32.
"""

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
NO_GRAD_CHUNK = 4096  # labelled positions projected at once when no gradient is kept (evaluation)


def _parts(model):
    """(decoder, lm_head) of a causal LM, through a peft wrapper (its LoRA layers live inside the decoder)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def supports_labelled_loss(model) -> bool:
    """Models whose logits are the plain lm_head of the final hidden state (no soft-capping or scaling)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    plain = not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))
    return plain and inner.get_output_embeddings() is not None and hasattr(inner, "get_decoder")


def labelled_loss_sum(model, inputs: dict) -> tuple:
    """(sum of the token losses, number of labelled tokens) of a batch with `labels` (shifted as the stock
    loss shifts them: position t predicts token t + 1)."""
    decoder, head = _parts(model)
    labels = inputs["labels"]
    hidden = decoder(**{k: v for k, v in inputs.items() if k != "labels"}).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][selected], targets[selected]
    if torch.is_grad_enabled():
        total = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    else:
        total = sum((F.cross_entropy(head(hidden[i:i + NO_GRAD_CHUNK]).float(), targets[i:i + NO_GRAD_CHUNK],
                                     reduction="sum") for i in range(0, len(targets), NO_GRAD_CHUNK)),
                    hidden.new_zeros((), dtype=torch.float32))
    return total, selected.sum()


def labelled_loss(model, inputs: dict, num_items_in_batch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The mean token loss, over `num_items_in_batch` when the Trainer counted the labelled tokens of all the
    micro-batches of an optimizer step (gradient accumulation), else over this batch's."""
    total, count = labelled_loss_sum(model, inputs)
    return total / (num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1))
