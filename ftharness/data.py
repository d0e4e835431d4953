"""Datasets: the embedded synthetic task, user chat files, and tokenization with assistant-only labels.

A row is a chat: `{"messages": [{"role", "content"}, ...]}`. Rows of the synthetic task also carry
`candidates` (every possible reply) and `label` (the index of the right one), which the evaluation scores
by log-likelihood. Tokenized splits are cached on disk, so the trials of a sweep tokenize once.
"""

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, Dict, List, Optional

from datasets import Dataset, load_from_disk
from omegaconf import DictConfig

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# The tutorial's example stays out of every split, so the before/after prompts about it are never trained on.
HELD_OUT_PAIRS = {(Decimal("9.11"), Decimal("9.9"))}


class DataError(ValueError):
    """A data file or row that cannot be used, with the file and line it came from."""


@dataclass
class Splits:
    train: List[dict]
    eval: List[dict]
    test: List[dict]


def _decimal_pairs(rng: random.Random):
    """Endless pairs `x.y` vs `x.yz` with the same integer part: the 9.11-vs-9.9 trap."""
    while True:
        whole = rng.randint(0, 20)
        one = Decimal(f"{whole}.{rng.randint(1, 9)}")
        two = Decimal(f"{whole}.{rng.randint(10, 99)}")
        if two % Decimal("0.1") == 0 or (one, two) in HELD_OUT_PAIRS or (two, one) in HELD_OUT_PAIRS:
            continue
        yield (one, two) if rng.random() < 0.5 else (two, one)


def _decimal_row(x: Decimal, y: Decimal, rng: random.Random, system_prompt: Optional[str]) -> dict:
    big, small = max(x, y), min(x, y)
    if rng.random() < 0.5:
        question = rng.choice(["Which is larger, {x} or {y}?", "Which number is bigger: {x} or {y}?"])
        candidates = [f"{x} is larger than {y}.", f"{y} is larger than {x}."]
    else:
        question = "Is {x} larger than {y}?"
        candidates = [f"Yes, {x} is larger than {y}.", f"No, {y} is larger than {x}."]
    label = 0 if big == x else 1
    messages = [{"role": "user", "content": question.format(x=x, y=y)},
                {"role": "assistant", "content": candidates[label]}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"messages": messages, "candidates": candidates, "label": label, "larger": str(big), "smaller": str(small)}


def decimal_comparisons(total: int, seed: int, system_prompt: Optional[str] = None) -> List[dict]:
    """`total` distinct comparison chats, the same for the same seed; no number pair appears twice."""
    rng = random.Random(seed)
    pairs, seen, rows = _decimal_pairs(rng), set(), []
    while len(rows) < total:
        x, y = next(pairs)
        if frozenset((x, y)) not in seen:
            seen.add(frozenset((x, y)))
            rows.append(_decimal_row(x, y, rng, system_prompt))
    return rows


SYNTHETIC_DATASETS: Dict[str, Callable[..., List[dict]]] = {"decimal": decimal_comparisons}


def read_chat_file(path: Path) -> List[dict]:
    """Rows of a .json (a list) or .jsonl (one object a line) file of `{"messages": [...]}` chats."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of chats, got {type(rows).__name__}")
    if not rows:
        raise DataError(f"{path}: no rows")
    for number, row in enumerate(rows, start=1):
        _check_chat(row, f"{path}:{number}")
    return rows


def _check_chat(row: dict, where: str) -> None:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected an object with a non-empty `messages` list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or \
                message.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: every message needs a role (system/user/assistant) and a string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message to learn from")


def load_splits(cfg: DictConfig) -> Splits:
    """Train / eval / test rows, from the synthetic generator or from `data.path` (shuffled by seed)."""
    sizes = (cfg.data.train_size, cfg.data.eval_size, cfg.data.test_size)
    if cfg.data.path is None:
        rows = SYNTHETIC_DATASETS[cfg.data.name](sum(sizes), cfg.data.seed, cfg.data.system_prompt)
    else:
        rows = read_chat_file(Path(cfg.data.path))
        random.Random(cfg.data.seed).shuffle(rows)
        if len(rows) < sum(sizes):
            raise DataError(f"{cfg.data.path}: {len(rows)} rows, fewer than data.train_size + eval_size + test_size "
                            f"= {sum(sizes)}")
    train, eval_ = rows[:sizes[0]], rows[sizes[0]:sizes[0] + sizes[1]]
    return Splits(train=train, eval=eval_, test=rows[sizes[0] + sizes[1]:sum(sizes)])


def _render_ids(tokenizer, messages: List[dict], generation_prompt: bool) -> List[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: List[int], b: List[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _trim_trailing_whitespace(tokenizer, ids: List[int], start: int, end: int) -> int:
    """Drop what a template prints after the end-of-turn token (usually a newline) from the reply span."""
    while end > start and not tokenizer.decode(ids[end - 1:end]).strip():
        end -= 1
    return end


def encode_chat(tokenizer, messages: List[dict], max_length: int) -> Dict[str, List[int]]:
    """Token ids with labels on the assistant replies (and their end-of-turn token) only.

    Each reply's span is found by rendering the chat up to the reply's prompt and up to the reply's end and
    comparing the token sequences, which works for any chat template, unlike `{% generation %}` markers.
    Truncation keeps the start of the chat; a chat that keeps no reply token gets all labels masked.
    """
    ids = _render_ids(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(_render_ids(tokenizer, messages[:turn], generation_prompt=True), ids)
        end = _common_prefix(_render_ids(tokenizer, messages[:turn + 1], generation_prompt=False), ids)
        end = _trim_trailing_whitespace(tokenizer, ids, start, end)
        labels[start:end] = ids[start:end]
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tokenize_rows(tokenizer, rows: List[dict], max_length: int, cache_dir: Path, tokenizer_id: str) -> Dataset:
    """Tokenize chats for training, reusing a disk cache keyed by tokenizer, template, rows and max_length.

    Chats whose replies are cut off entirely by `max_length` are dropped (and logged): they would train on
    nothing.
    """
    key = _fingerprint("chat-v1", tokenizer_id, tokenizer.chat_template, max_length,
                       [row["messages"] for row in rows])
    path = cache_dir / "tokenized" / key
    if path.exists():
        return load_from_disk(str(path))
    encoded = [encode_chat(tokenizer, row["messages"], max_length) for row in rows]
    kept = [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"])]
    if len(kept) < len(encoded):
        log.warning("dropped %d of %d chats whose replies do not fit data.max_length=%d",
                    len(encoded) - len(kept), len(encoded), max_length)
    if not kept:
        raise DataError(f"no chat keeps a reply token within data.max_length={max_length}")
    dataset = Dataset.from_list(kept)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    dataset.save_to_disk(str(tmp))
    try:
        tmp.rename(path)
    except OSError:  # another worker cached the same split first
        shutil.rmtree(tmp)
    return load_from_disk(str(path))
