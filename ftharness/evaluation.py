"""Accuracy by candidate log-likelihood, and greedy answers to fixed prompts.

Scoring the candidate replies of a row (one forward pass per batch of sequences) is exact and far faster
than generating free text and parsing it.
"""

from typing import List

import torch

from ftharness.tokenization import IGNORE_INDEX, encode_chat


def _left_pad(sequences: List[List[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([[value] * (width - len(s)) + s for s in sequences])


@torch.no_grad()
def reply_log_likelihoods(model, tokenizer, chats: List[List[dict]], max_length: int, batch_size: int) -> List[float]:
    """Sum of log-probabilities of each chat's assistant tokens, batched with per-batch padding.

    Sequences are padded on the left so that every reply ends the row: the vocabulary projection then runs
    only over the last positions (`logits_to_keep`), not over the prompts.
    """
    model.eval()
    encoded = [encode_chat(tokenizer, chat, max_length) for chat in chats]
    scores: List[float] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        input_ids = _left_pad([e["input_ids"] for e in batch], tokenizer.pad_token_id).to(model.device)
        attention = _left_pad([e["attention_mask"] for e in batch], 0).to(model.device)
        labels = _left_pad([e["labels"] for e in batch], IGNORE_INDEX).to(model.device)
        keep = max(len(e["labels"]) - _first_label(e["labels"]) for e in batch) + 1
        logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep).logits[:, :-1].float()
        targets = labels[:, labels.shape[1] - keep + 1:]
        mask = targets != IGNORE_INDEX
        token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.extend((token_logp * mask).sum(dim=-1).tolist())
    return scores


def _first_label(labels: List[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def candidate_accuracy(model, tokenizer, rows: List[dict], max_length: int, batch_size: int) -> float:
    """Share of rows whose right candidate reply is the most likely one."""
    chats = []
    for row in rows:
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]
        chats.extend(prompt + [{"role": "assistant", "content": c}] for c in row["candidates"])
    scores = iter(reply_log_likelihoods(model, tokenizer, chats, max_length, batch_size))
    correct = 0
    for row in rows:
        row_scores = [next(scores) for _ in row["candidates"]]
        correct += row_scores.index(max(row_scores)) == row["label"]
    return correct / len(rows)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: List[str], max_new_tokens: int, system_prompt=None) -> List[str]:
    """Greedy replies to single-turn prompts through the chat template, generated as one left-padded batch."""
    if not prompts or max_new_tokens == 0:
        return []
    model.eval()
    chats = [([{"role": "system", "content": system_prompt}] if system_prompt else []) +
             [{"role": "user", "content": p}] for p in prompts]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = "right"
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    replies = output[:, batch["input_ids"].shape[1]:]
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]
