"""Accuracy by candidate log-likelihood, greedy answers to before/after prompts, and eval batches sized by tokens.

Scoring the candidate replies of a row (one forward pass per batch of sequences) is exact and far faster
than generating free text and parsing it. Batches are bounded by rows and by tokens (padding included), so a
set of long multi-turn chats makes small batches instead of one that does not fit.
"""

from typing import Dict, List, Optional

import torch
from omegaconf import DictConfig
from transformers import StoppingCriteria

from ftharness.data.formats import CHAT_FORMATS
from ftharness.data.sources import DataError
from ftharness.data.splits import Splits
from ftharness.data.synthetic import SYNTHETIC_PROMPTS
from ftharness.data.tokenization import IGNORE_INDEX, encode_chat
from ftharness.trial.loss import labelled_log_likelihoods, right_padded
from ftharness.ui.console import progress


def token_budget_batches(lengths: List[int], max_rows: int, max_tokens: int,
                         sizes: Optional[List[int]] = None) -> List[List[int]]:
    """Item indices grouped into batches of at most `max_rows` rows and `max_tokens` padded tokens (rows x the
    longest row), longest items first: similar lengths share a batch (little padding) and the largest batch
    comes first, so a batch that does not fit fails at once. An item stands for `sizes[i]` rows of its length
    (a group of sequences that go together; 1 each by default); one over the budget goes alone."""
    sizes = sizes or [1] * len(lengths)
    batches: List[List[int]] = []
    rows = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        batch = batches[-1] if batches else None
        if batch and rows + sizes[index] <= max_rows and (rows + sizes[index]) * lengths[batch[0]] <= max_tokens:
            batch.append(index)
            rows += sizes[index]
        else:
            batches.append([index])
            rows = sizes[index]
    return batches


@torch.no_grad()
def reply_log_likelihoods(model, tokenizer, chats: List[List[dict]], max_length: int, batch_size: int,
                          batch_tokens: int, share_prefix: bool = False,
                          groups: Optional[List[int]] = None) -> List[float]:
    """Sum of log-probabilities of each chat's last assistant reply, in token-budget batches with per-batch padding:
    the vocabulary projection runs at the reply positions only and, with `share_prefix`, the leading tokens all
    chats of a batch share (the template header, a system prompt) run once (ftharness/trial/loss.py). Chats with the
    same `groups` entry (the candidate replies of one question) share their prompt: they go into one batch, and with
    `share_prefix` that prompt runs once for them all."""
    model.eval()
    encoded = [encode_chat(tokenizer, chat, max_length, train_on="last") for chat in chats]
    group_rows: Dict[int, List[int]] = {}
    for index, group in enumerate(groups if groups is not None else range(len(chats))):
        group_rows.setdefault(group, []).append(index)
    units = list(group_rows.values())  # batched whole
    batches = token_budget_batches([max(len(encoded[i]["input_ids"]) for i in rows) for rows in units],
                                   batch_size, batch_tokens, [len(rows) for rows in units])
    scores: List[float] = [0.0] * len(encoded)
    with progress(len(encoded), "scoring answer candidates", "seq") as bar:
        for batch_groups in batches:
            indices = [i for g in batch_groups for i in units[g]]
            local_groups = [k for k, g in enumerate(batch_groups) for _ in units[g]]
            batch = [encoded[i] for i in indices]
            inputs = {key: right_padded([e[key] for e in batch], pad).to(model.device) for key, pad in
                      (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX))}
            likelihoods = labelled_log_likelihoods(model, inputs, share_prefix, local_groups if groups else None)
            for index, score in zip(indices, likelihoods.tolist()):
                scores[index] = score
            bar.update(len(indices))
    return scores


def candidate_accuracy(model, tokenizer, rows: List[dict], cfg: DictConfig) -> float:
    """Share of rows whose right candidate reply is the most likely one, each candidate in place of the row's
    last reply (the dialogue before it, earlier assistant turns included, is the prompt)."""
    chats, groups = [], []
    for number, row in enumerate(rows):
        messages = row["messages"]
        prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
        chats.extend(prompt + [{"role": "assistant", "content": c}] for c in row["candidates"])
        groups.extend([number] * len(row["candidates"]))
    scores = iter(reply_log_likelihoods(model, tokenizer, chats, cfg.data.max_length, cfg.eval.batch_size,
                                        cfg.eval.batch_tokens, cfg.train.share_prefix is not False, groups))
    correct = 0
    for row in rows:
        row_scores = [next(scores) for _ in row["candidates"]]
        correct += row_scores.index(max(row_scores)) == row["label"]
    return correct / len(rows)


# ---- before/after prompts -----------------------------------------------------------------------------


def _first_exchange(row: dict) -> dict:
    """A held-out row's first user turn (the system prompt before it included) and the reply that followed."""
    if "chosen" in row:  # a preference pair: its prompt, and the chosen reply as the reference
        return {"messages": row["prompt"], "reference": row["chosen"][-1]["content"]}
    messages = row["messages"]
    user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return {"messages": messages[:user + 1], "reference": messages[user + 1]["content"]}


def before_after_prompts(cfg: DictConfig, splits: Splits) -> List[dict]:
    """The chats answered before and after training, each `{"messages", "prompt", "reference"}`.

    `eval.prompts` when given; else the embedded task's own questions; else, for the user's data, the first
    user turn of the first `eval.num_prompts` held-out (eval) dialogues with the reply the data gives.
    Raises DataError, before any model loads, when the eval split has fewer dialogues than asked for.
    """
    system = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
    if cfg.eval.prompts is not None or cfg.data.path is None:
        texts = cfg.eval.prompts if cfg.eval.prompts is not None else SYNTHETIC_PROMPTS[cfg.data.name]
        return [{"messages": system + [{"role": "user", "content": t}], "prompt": t, "reference": None}
                for t in texts]
    if splits.format not in (*CHAT_FORMATS, "preference"):
        return []  # raw text or labelled sentences: nothing to answer
    if len(splits.eval) < cfg.eval.num_prompts:
        raise DataError(f"eval.num_prompts={cfg.eval.num_prompts} held-out dialogues asked for, the eval split has "
                        f"{len(splits.eval)}: lower eval.num_prompts or raise data.eval_size")
    exchanges = [_first_exchange(row) for row in splits.eval[:cfg.eval.num_prompts]]
    return [{**e, "prompt": e["messages"][-1]["content"]} for e in exchanges]


class _TokenProgress(StoppingCriteria):
    """Advances a progress bar by one for every token generated; never stops generation."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores, **kwargs):
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def greedy_answers(model, tokenizer, chats: List[List[dict]], max_new_tokens: int) -> List[str]:
    """Greedy replies to chats that end with a user turn, through the chat template, as one left-padded batch."""
    if not chats or max_new_tokens == 0:
        return []
    model.eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = "right"
    with progress(max_new_tokens, f"answering {len(chats)} prompts", "tok") as bar:
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                stopping_criteria=[_TokenProgress(bar)])
    replies = output[:, batch["input_ids"].shape[1]:]
    return [whole_characters(tokenizer.decode(r, skip_special_tokens=True)).strip() for r in replies]


REPLACEMENT_CHARACTER = "\ufffd"  # what decoding puts for bytes that do not make a whole UTF-8 character


def whole_characters(text: str) -> str:
    """`text` without the broken character at its end: an answer cut at `eval.max_new_tokens` can end inside a
    character that a byte-level tokenizer splits into several tokens (SmolLM2's: ~2 tokens a Chinese character)."""
    return text.rstrip(REPLACEMENT_CHARACTER)
