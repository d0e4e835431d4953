"""The causal-LM loss from the hidden states at the labelled positions only, with a batch's shared prefix run once.

The stock loss projects every position onto the vocabulary (batch x length x vocabulary logits, upcast to
fp32) although only the reply tokens carry labels, and on chat data most positions are prompt. Picking the
labelled positions first and projecting only those gives the same loss for a fraction of the lm_head's work
and memory: on a 7B model with a 100k vocabulary, the full logits of one 2048-token row are ~0.8 GB in fp32.

The rows of a batch of chats often start with the same tokens: the chat template's header and a system
prompt (SmolLM2's default one is 24 of the ~62 tokens of an embedded-task chat; a dataset's own system prompt
is often longer). Under causal attention those positions' states do not depend on what follows them, so the
shared prefix runs once (as a batch of one row, its keys and values then repeated for every row) and the rows
run on from where they differ: the same loss and gradients, without the prefix's work for all rows but one.
With LoRA dropout the shared positions draw one dropout mask for the whole batch instead of one per row.
Scoring the candidate replies of a question goes one level further: each question's prompt runs once for all
its candidates (`groups`), on top of the prefix the whole batch shares.

What decides the shapes between forward and backward (the shared prefix's length, which positions carry labels,
how many tokens a batch has) is found on the host, when the training collator builds the batch (`with_host_facts`):
found on the device, each is a host sync that a GPU waits for (7 per micro-batch counted, benchmarks/step_ops.py),
and no work overlaps it.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ftharness.data.tokenization import IGNORE_INDEX  # labels the loss skips (the prompt, padding)

HOST_FACTS = ("num_tokens", "shared_prefix", "labelled_positions")  # what with_host_facts adds; not model inputs
NO_GRAD_CHUNK = 256  # labelled positions projected at once without gradients (evaluation): their logits stay in cache
MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth the extra decoder call


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


def _common_length(ids: torch.Tensor, mask: Optional[torch.Tensor], labels: torch.Tensor) -> int:
    """How many leading tokens the rows of a right-padded batch share, stopping short of the first position whose
    state predicts a label (position t predicts token t + 1)."""
    same = (ids == ids[:1]).all(dim=0)
    if mask is not None:
        same &= mask.bool().all(dim=0)
    length = int(same.int().cumprod(dim=0).sum())
    labelled = (labels != IGNORE_INDEX).any(dim=0)  # the columns where some row has a label
    return min(length, int(labelled.int().argmax()) - 1) if labelled.any() else length


def shared_prefix_length(inputs: dict) -> int:
    """The leading tokens all rows of a right-padded batch share (see _common_length); 0 when not worth sharing
    (one row, packed rows)."""
    ids = inputs["input_ids"]
    if ids.shape[0] < 2 or "position_ids" in inputs:
        return 0
    length = min(_common_length(ids, inputs.get("attention_mask"), inputs["labels"]), ids.shape[1] - 1)
    # every row keeps a token to run, even one cut off before its reply
    return length if length >= MIN_SHARED_PREFIX else 0


def with_host_facts(collator):
    """`collator`, its batches carrying what the loss and the token count need to know on the host, computed from
    the host batch before it moves to the device: `num_tokens` (non-padding tokens; all of a packed batch),
    `shared_prefix` (shared_prefix_length) and `labelled_positions` (row and column of each labelled target,
    the labels shifted by one as the loss shifts them). A batch without padding loses its attention mask."""
    def collate(features):
        batch = collator(features)
        mask = batch.get("attention_mask")
        batch["num_tokens"] = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        batch["shared_prefix"] = shared_prefix_length(batch)
        batch["labelled_positions"] = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero().T
        if mask is not None and bool(mask.all()):  # no row padded: causal attention alone, no mask to check
            del batch["attention_mask"]  # (ftharness/model/sdpa_masks.py)
        return batch

    return collate


def model_inputs(inputs: dict) -> dict:
    """The batch without its labels and host facts: what the model takes."""
    return {k: v for k, v in inputs.items() if k != "labels" and k not in HOST_FACTS}


def decoder_states(model, inputs: dict, share_prefix: bool = False) -> Tuple[torch.Tensor, int]:
    """(the decoder's last hidden states from position `start` on, `start`): with `share_prefix`, the batch's
    shared prefix runs once and `start` is its length; else every position runs and `start` is 0.

    Not under gradient checkpointing in training: checkpointed layers drop the prefix's keys and values.
    """
    decoder = _parts(model)[0]
    arguments = model_inputs(inputs)
    checkpointed = decoder.training and getattr(decoder, "is_activation_checkpointing", False)
    shared = inputs["shared_prefix"] if "shared_prefix" in inputs else shared_prefix_length(inputs)
    start = shared if share_prefix and not checkpointed else 0
    if not start:
        return decoder(**arguments).last_hidden_state, 0
    ids = arguments.pop("input_ids")
    prefix = decoder(input_ids=ids[:1, :start], use_cache=True).past_key_values
    prefix.batch_repeat_interleave(ids.shape[0])
    return decoder(input_ids=ids[:, start:], past_key_values=prefix, use_cache=False, **arguments).last_hidden_state, \
        start


def right_padded(rows: Sequence, value: int) -> torch.Tensor:
    """Rows of token ids, labels or mask values (lists or 1-D tensors) as one right-padded int64 batch."""
    rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    width = max(len(row) for row in rows)
    return torch.stack([F.pad(row, (0, width - len(row)), value=value) for row in rows])


def grouped_decoder_states(model, inputs: dict, groups: List[int]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(hidden states, the label each predicts) of a right-padded batch without gradients whose rows come in
    groups that share a prompt (`groups[i]`: row i's group, e.g. the candidate replies of one question): the
    batch's shared prefix runs once, each group's prompt once more, then each row's own tokens, attending to
    both through the KV cache at their own positions. None when no group has a prompt of its own to share."""
    ids, labels = inputs["input_ids"], inputs["labels"]
    if not (labels != IGNORE_INDEX).any():
        return None  # every reply cut off by max_length: nothing to score, no tokens of their own to run
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    decoder, index = _parts(model)[0], torch.tensor(groups, device=ids.device)
    shared = shared_prefix_length(inputs)
    members = [(index == g).nonzero()[:, 0] for g in range(max(groups) + 1)]
    ends = [_common_length(ids[rows], mask[rows], labels[rows]) for rows in members]  # each group's prompt
    if min(ends) <= shared:
        return None
    cache = decoder(input_ids=ids[:1, :shared], use_cache=True).past_key_values if shared else None
    if cache is not None:
        cache.batch_repeat_interleave(len(members))
    prompt_ids = right_padded([ids[rows[0], shared:end] for rows, end in zip(members, ends)], 0)
    prompt_mask = right_padded([mask[rows[0], shared:end] for rows, end in zip(members, ends)], 0)
    ones = mask.new_ones(len(members), shared)
    positions = torch.arange(shared, shared + prompt_ids.shape[1], device=ids.device).expand_as(prompt_ids)
    cache = decoder(input_ids=prompt_ids, attention_mask=torch.cat([ones, prompt_mask], 1), position_ids=positions,
                    past_key_values=cache, use_cache=True).past_key_values
    cache.reorder_cache(index)  # each row gets its group's keys and values
    starts, lengths = [ends[g] for g in groups], mask.sum(dim=1).tolist()
    own_ids = right_padded([ids[i, start:lengths[i]] for i, start in enumerate(starts)], 0)
    own_mask = right_padded([mask[i, start:lengths[i]] for i, start in enumerate(starts)], 0)
    targets = right_padded([labels[i, start + 1:lengths[i]] for i, start in enumerate(starts)], IGNORE_INDEX)
    positions = torch.tensor(starts, device=ids.device)[:, None] + torch.arange(own_ids.shape[1], device=ids.device)
    attention = torch.cat([ones[index], prompt_mask[index], own_mask], 1)
    states = decoder(input_ids=own_ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                     use_cache=False).last_hidden_state
    return states[:, :targets.shape[1]], targets


def _labelled(states: torch.Tensor, targets: torch.Tensor, positions: Optional[torch.Tensor],
              start: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states, targets, the row of each) at the labelled positions: gathered at the collator's `positions` (their
    number known on the host: fixed shapes, no sync), else found on the device with a boolean mask."""
    if positions is None:
        selected = targets != IGNORE_INDEX
        return states[selected], targets[selected], selected.nonzero()[:, 0]
    rows, columns = positions
    index = rows * targets.shape[1] + columns - start  # the states and targets start at column `start`
    return states.flatten(0, 1).index_select(0, index), targets.flatten().index_select(0, index), rows


def _token_losses(model, inputs: dict, share_prefix: bool,
                  groups: Optional[List[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of every labelled token, the row of each): logits at the labelled positions only."""
    grouped = grouped_decoder_states(model, inputs, groups) if share_prefix and groups else None
    if grouped is not None:
        states, targets, rows = _labelled(*grouped, None, 0)
    else:
        states, start = decoder_states(model, inputs, share_prefix)
        states, targets, rows = _labelled(states[:, :-1], inputs["labels"][:, start + 1:],
                                          inputs.get("labelled_positions"), start)
    head = _parts(model)[1]
    if torch.is_grad_enabled():
        return F.cross_entropy(head(states).float(), targets, reduction="none"), rows
    losses = [F.cross_entropy(head(states[i:i + NO_GRAD_CHUNK]).float(), targets[i:i + NO_GRAD_CHUNK],
                              reduction="none") for i in range(0, len(targets), NO_GRAD_CHUNK)]
    return torch.cat(losses) if losses else states.new_zeros(0, dtype=torch.float32), rows


def labelled_loss_sum(model, inputs: dict, share_prefix: bool = False) -> tuple:
    """(sum of the token losses, number of labelled tokens) of a batch with `labels` (shifted as the stock
    loss shifts them: position t predicts token t + 1)."""
    losses, _ = _token_losses(model, inputs, share_prefix)
    return losses.sum(), torch.tensor(len(losses))


def labelled_loss(model, inputs: dict, num_items_in_batch: Optional[torch.Tensor] = None,
                  share_prefix: bool = False) -> torch.Tensor:
    """The mean token loss, over `num_items_in_batch` when the Trainer counted the labelled tokens of all the
    micro-batches of an optimizer step (gradient accumulation), else over this batch's."""
    total, count = labelled_loss_sum(model, inputs, share_prefix)
    return total / (num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1))


def labelled_log_likelihoods(model, inputs: dict, share_prefix: bool = False,
                             groups: Optional[List[int]] = None) -> torch.Tensor:
    """Each row's summed log-probability of its labelled tokens (rows of a `groups` entry share their prompt, run
    once with `share_prefix`); through the full logits for models whose logits are not the plain lm_head
    (soft-capped or scaled)."""
    if supports_labelled_loss(model):
        losses, rows = _token_losses(model, inputs, share_prefix, groups)
    else:
        logits = model(**model_inputs(inputs)).logits[:, :-1]
        targets = inputs["labels"][:, 1:]
        selected = targets != IGNORE_INDEX
        losses, rows = F.cross_entropy(logits[selected].float(), targets[selected], reduction="none"), \
            selected.nonzero()[:, 0]
    return -torch.zeros(len(inputs["input_ids"]), device=losses.device).index_add_(0, rows, losses)
