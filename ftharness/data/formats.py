"""Data formats: each record of a source (ftharness/data/sources.py) turned into a normalized row.

Every source (the synthetic task, JSON / JSONL / Parquet / CSV files or a folder of them, a hub dataset)
yields records; a format turns each record into a normalized row:
- chats (`messages`, `sharegpt`, `emollm`, `alpaca`, `chitchat`) -> `{"messages": [{"role", "content"}, ...]}`
- `text` -> `{"text": ...}`
- `preference` -> `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`
- `classification` -> `{"text": ..., "label": int}`
A record that does not fit is skipped and counted (or, with `data.strict`, stops the run), always named
by file and row, before any model loads.
"""

import logging
from itertools import groupby
from operator import itemgetter
from typing import Callable, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from ftharness.data.sources import DataError

log = logging.getLogger(__name__)

CHAT_FORMATS = ("messages", "sharegpt", "emollm", "alpaca", "chitchat")
FORMATS = (*CHAT_FORMATS, "text", "preference", "classification")
SHOWN_SKIPS = 5
TRAIN_ON = ("all", "last", "everything")  # the loss covers every assistant turn, the last one, or every token


class RowError(ValueError):
    """Why one record does not fit its format."""


def _field(record: dict, name: str, columns: Dict[str, str]):
    key = columns.get(name, name)
    if key not in record or record[key] is None:
        raise RowError(f"missing field `{key}`")
    return record[key]


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    return value


def check_turns(messages: List[dict]) -> List[dict]:
    """A chat must be: an optional system message, then user / assistant turns alternating, ending with a reply."""
    if not messages:
        raise RowError("empty conversation")
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expected[:len(body)] or body[-1] != "assistant":
        raise RowError(f"roles must alternate user/assistant after an optional system and end with assistant, "
                       f"got {roles}")
    return messages


def _message_list(value, roles: Dict[str, str], role_key: str, content_key: str) -> List[dict]:
    if not isinstance(value, list):
        raise RowError(f"expected a list of messages, got {type(value).__name__}")
    messages = []
    for item in value:
        if not isinstance(item, dict) or role_key not in item or content_key not in item:
            raise RowError(f"every message needs `{role_key}` and `{content_key}`")
        role = roles.get(item[role_key], None)
        if role is None:
            raise RowError(f"unknown role {item[role_key]!r} (data.role_map knows {', '.join(roles)})")
        messages.append({"role": role, "content": _string(item[content_key], "a message's content")})
    return messages


def _messages(record: dict, cfg: DictConfig) -> dict:
    roles = {r: r for r in ("system", "user", "assistant")}
    return {"messages": check_turns(_message_list(_field(record, "messages", cfg.columns), roles, "role", "content"))}


def _sharegpt(record: dict, cfg: DictConfig) -> dict:
    roles = dict(cfg.role_map)
    conversation = _message_list(_field(record, "conversations", cfg.columns), roles, "from", "value")
    return {"messages": check_turns(conversation)}


def _emollm(record: dict, cfg: DictConfig) -> dict:
    """EmoLLM: `conversation: [{"system"?, "input", "output"}, ...]`, the system prompt only on the first turn."""
    turns = _field(record, "conversation", cfg.columns)
    if not isinstance(turns, list) or not turns:
        raise RowError("`conversation` must be a non-empty list of turns")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("every turn must be an object with `input` and `output`")
        if number == 0 and turn.get("system"):
            messages.append({"role": "system", "content": _string(turn["system"], "`system`")})
        messages.append({"role": "user", "content": _string(_field(turn, "input", {}), "`input`")})
        messages.append({"role": "assistant", "content": _string(_field(turn, "output", {}), "`output`")})
    return {"messages": check_turns(messages)}


def _chitchat_said(turns) -> List[Tuple[str, str]]:
    """(sender, text) of every message of a chitchat record, in order, blank texts left out."""
    if not isinstance(turns, list):
        raise RowError(f"`messages` must be a list of turns, got {type(turns).__name__}")
    said = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, list):
            raise RowError(f"turn {number} must be a list of messages, got {type(turn).__name__}")
        for message in turn:
            if not isinstance(message, dict):
                raise RowError(f"turn {number}: every message must be an object with `text` and `sender`")
            sender = _string(_field(message, "sender", {}), f"turn {number}: `sender`")
            text = _string(_field(message, "text", {}), f"turn {number}: `text`").strip()
            if text:
                said.append((sender, text))
    return said


def _chitchat(record: dict, cfg: DictConfig) -> Optional[dict]:
    """A conversation of the chitchat-dataset wheel (conf/data/chitchat.yaml): `messages` is a list of turns,
    each a list of one speaker's consecutive `{"text", "sender", "timestamp"}` messages.

    What the wheel (0.9.0) holds, measured: 7,168 conversations keyed by UUID, 258,145 messages, every one with a
    string `text` (33 blank), `sender` and `timestamp`. Two speakers in 4,018 conversations, one in 3,150 (nobody
    answered), never more; adjacent turns never share a sender. 4,017 chats come out (one responder sent only
    blank messages): 2 to 564 turns, median 16 (775 have 2); 1,279 characters median, 115,780 at most; in SmolLM2
    tokens, with its template's default system prompt (32 tokens), median 436, p90 2,170, max 29,590 (38 % fit in
    256 tokens, 54 % in 512). A turn is 16 tokens median, 58 at p95. Most openers greet ("hello", "hi", "hey").

    The person who opens the conversation is the user and the other the assistant: a chat model answers, and
    only the responder answers every turn of the other side (the opener's first turn answers nobody). Each
    speaker's consecutive messages become one turn, joined by newlines; blank messages are left out. The opener's
    last turn, when nobody answered it, is dropped (a chat ends with a reply). A conversation with one speaker
    holds no reply: no row (None), not an error. More than two speakers is not a two-sided chat: a RowError.
    The record's topic `prompt` is left out: it was shown to both people, and neither said it.
    """
    said = _chitchat_said(_field(record, "messages", cfg.columns))
    turns = [(sender, "\n".join(text for _, text in group)) for sender, group in groupby(said, key=itemgetter(0))]
    speakers = list(dict.fromkeys(sender for sender, _ in turns))
    if len(speakers) > 2:
        raise RowError(f"{len(speakers)} speakers: a chat has two")
    if len(speakers) < 2:
        return None
    messages = [{"role": "user" if sender == speakers[0] else "assistant", "content": text} for sender, text in turns]
    return {"messages": check_turns(messages[:-1] if messages[-1]["role"] == "user" else messages)}


def _alpaca(record: dict, cfg: DictConfig) -> dict:
    instruction = _string(_field(record, "instruction", cfg.columns), "`instruction`")
    extra = record.get(cfg.columns.get("input", "input")) or ""
    prompt = f"{instruction}\n\n{_string(extra, '`input`')}" if extra else instruction
    messages = [{"role": "user", "content": prompt},
                {"role": "assistant", "content": _string(_field(record, "output", cfg.columns), "`output`")}]
    system = record.get(cfg.columns.get("system", "system"))
    if system:
        messages.insert(0, {"role": "system", "content": _string(system, "`system`")})
    return {"messages": check_turns(messages)}


def _text(record: dict, cfg: DictConfig) -> dict:
    text = _string(_field(record, "text", cfg.columns), "`text`")
    if not text.strip():
        raise RowError("empty text")
    return {"text": text}


def _side(value, role: str) -> List[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _message_list(value, {r: r for r in ("system", "user", "assistant")}, "role", "content")


def _preference(record: dict, cfg: DictConfig) -> dict:
    return {"prompt": _side(_field(record, "prompt", cfg.columns), "user"),
            "chosen": _side(_field(record, "chosen", cfg.columns), "assistant"),
            "rejected": _side(_field(record, "rejected", cfg.columns), "assistant")}


def _classification(record: dict, cfg: DictConfig) -> dict:
    label = _field(record, "label", cfg.columns)
    names = list(cfg.label_names)
    if isinstance(label, str) and names:
        if label not in names:
            raise RowError(f"label {label!r} is not one of data.label_names {names}")
        label = names.index(label)
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise RowError(f"label must be a class id (int >= 0) or one of data.label_names, got {label!r}")
    return {"text": _string(_field(record, "text", cfg.columns), "`text`"), "label": label}


# format -> the row of a record, or None for a record that holds nothing to train on (chitchat: nobody answered)
NORMALIZERS: Dict[str, Callable[[dict, DictConfig], Optional[dict]]] = {
    "messages": _messages, "sharegpt": _sharegpt, "emollm": _emollm, "alpaca": _alpaca, "chitchat": _chitchat,
    "text": _text, "preference": _preference, "classification": _classification,
}
# Auto-detection: the first format whose (column-mapped) fields the first record has.
SIGNATURES = [("messages", ["messages"]), ("sharegpt", ["conversations"]), ("emollm", ["conversation"]),
              ("alpaca", ["instruction", "output"]), ("preference", ["chosen", "rejected"]),
              ("classification", ["text", "label"]), ("text", ["text"])]


def detect_format(record, cfg: DictConfig, where: str) -> str:
    if isinstance(record, dict):
        for name, fields in SIGNATURES:
            if all(cfg.columns.get(f, f) in record for f in fields):
                return name
    keys = list(record) if isinstance(record, dict) else type(record).__name__
    raise DataError(f"{where}: cannot tell the data format from {keys}; set data.format "
                    f"({', '.join(FORMATS)}) and, if the columns are named differently, data.columns")


def normalize(records: List[Tuple[str, object]], cfg: DictConfig) -> Tuple[str, List[dict], List[str]]:
    """(format, rows, skipped) — bad records skipped with their reason, or the first one raised when strict;
    records that hold nothing to train on counted in the log."""
    fmt = cfg.format if cfg.format != "auto" else detect_format(records[0][1], cfg, records[0][0])
    rows, skipped, empty = [], [], 0
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise RowError(f"expected an object, got {type(record).__name__}")
            row = NORMALIZERS[fmt](record, cfg)
            if row is None:
                empty += 1
            else:
                rows.append(row)
        except RowError as reason:
            if cfg.strict:
                raise DataError(f"{where}: {reason} (data.format={fmt})") from None
            skipped.append(f"{where}: {reason}")
    if empty:
        log.info("%d of %d records hold no reply to train on (data.format=%s): no rows", empty, len(records), fmt)
    for line in skipped[:SHOWN_SKIPS]:
        log.warning("skipped %s", line)
    if skipped:
        log.warning("skipped %d of %d records (data.strict=true stops at the first)", len(skipped), len(records))
    if not rows:
        raise DataError(f"{cfg.path}: no usable records in format {fmt}; first problem: {skipped[0]}")
    return fmt, rows, skipped
