"""Datasets: where rows come from, which format they are in, and how they split.

Every source (the synthetic task, JSON / JSONL / Parquet / CSV files or a folder of them, a hub dataset)
yields records; a format turns each record into a normalized row:
- chats (`messages`, `sharegpt`, `emollm`, `alpaca`) -> `{"messages": [{"role", "content"}, ...]}`
- `text` -> `{"text": ...}`
- `preference` -> `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`
- `classification` -> `{"text": ..., "label": int}`
A record that does not fit is skipped and counted (or, with `data.strict`, stops the run), always named
by file and row, before any model loads.
"""

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ftharness.synthetic import SYNTHETIC_DATASETS, with_wrong_answers

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
CHAT_FORMATS = ("messages", "sharegpt", "emollm", "alpaca")
FORMATS = (*CHAT_FORMATS, "text", "preference", "classification")
SHOWN_SKIPS = 5
TRAIN_ON = ("all", "last", "everything")  # the loss covers every assistant turn, the last one, or every token


class DataError(ValueError):
    """A data source or row that cannot be used, named by file and row."""


class RowError(ValueError):
    """Why one record does not fit its format."""


@dataclass
class Splits:
    train: List[dict]
    eval: List[dict]
    test: List[dict]
    format: str = "messages"
    skipped: List[str] = field(default_factory=list)  # "file:row: reason", one per skipped record
    wrong_answers: int = 0  # training rows answered wrongly on purpose (data.label_noise)

    def stats(self) -> dict:
        return {"format": self.format, "train": len(self.train), "eval": len(self.eval), "test": len(self.test),
                "train_wrong_answers": self.wrong_answers, "skipped": len(self.skipped),
                "skipped_examples": self.skipped[:SHOWN_SKIPS]}


# ---- sources ------------------------------------------------------------------------------------------


def looks_like_hub_id(path: str) -> bool:
    """`owner/name` that is no local path and has no file suffix: a dataset on the hub (online users)."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(path).exists() and \
        Path(path).suffix not in FILE_SUFFIXES


def data_files(path: Path) -> List[Path]:
    """The file itself, or the supported files of a folder in name order."""
    files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no {' / '.join(FILE_SUFFIXES)} files in this folder")
    return files


def read_utf8(path: Path) -> str:
    """A file's text; one that is not UTF-8 is a DataError naming the line and byte where decoding failed."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}, byte offset "
                        f"{err.start}); save the file as UTF-8") from None


def _json_records(path: Path) -> Iterator[Tuple[str, object]]:
    text = read_utf8(path)
    if not text.strip():
        return  # an empty file: read_records reports "no records"
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for number, record in enumerate(records, start=1):
        yield f"{path}: record {number}", record


def _table_records(path: Path) -> Iterator[Tuple[str, object]]:
    from datasets import load_dataset

    builder = path.suffix.lstrip(".")
    if builder == "csv":
        read_utf8(path)  # a clear line for a file in another encoding, not the CSV reader's trace
    try:
        table = load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types for unreadable files
        raise DataError(f"{path}: cannot be read as {builder} ({type(err).__name__}: {err})") from None
    first_line = 2 if builder == "csv" else 1  # a CSV's line 1 is its header
    for index, record in enumerate(table):
        yield f"{path}:{index + first_line}", record


def _hub_records(name: str) -> Iterator[Tuple[str, object]]:
    from datasets import load_dataset

    for index, record in enumerate(load_dataset(name, split="train")):
        yield f"{name}: row {index + 1}", record


def read_records(path: str) -> List[Tuple[str, object]]:
    """(where, record) pairs of a file, a folder of files or a hub dataset; an empty source is an error."""
    if looks_like_hub_id(path):
        records = list(_hub_records(path))
    else:
        records = []
        for file in data_files(Path(path)):
            reader = _json_records if file.suffix in (".json", ".jsonl") else _table_records
            records.extend(reader(file))
    if not records:
        raise DataError(f"{path}: no records")
    return records


# ---- formats ------------------------------------------------------------------------------------------


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


NORMALIZERS: Dict[str, Callable[[dict, DictConfig], dict]] = {
    "messages": _messages, "sharegpt": _sharegpt, "emollm": _emollm, "alpaca": _alpaca,
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
    """(format, rows, skipped) — bad records skipped with their reason, or the first one raised when strict."""
    fmt = cfg.format if cfg.format != "auto" else detect_format(records[0][1], cfg, records[0][0])
    rows, skipped = [], []
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise RowError(f"expected an object, got {type(record).__name__}")
            rows.append(NORMALIZERS[fmt](record, cfg))
        except RowError as reason:
            if cfg.strict:
                raise DataError(f"{where}: {reason} (data.format={fmt})") from None
            skipped.append(f"{where}: {reason}")
    for line in skipped[:SHOWN_SKIPS]:
        log.warning("skipped %s", line)
    if skipped:
        log.warning("skipped %d of %d records (data.strict=true stops at the first)", len(skipped), len(records))
    if not rows:
        raise DataError(f"{cfg.path}: no usable records in format {fmt}; first problem: {skipped[0]}")
    return fmt, rows, skipped


# ---- splits -------------------------------------------------------------------------------------------


def _count(size, total: int) -> int:
    """A split size: a count (>= 1) or a share of the rows (below 1)."""
    return int(round(size * total)) if 0 < size < 1 else int(size)


def _split_rows(rows: List[dict], cfg: DictConfig, fixed_eval: Optional[List[dict]]) -> Tuple[list, list, list]:
    total = len(rows)
    eval_n = 0 if fixed_eval is not None else _count(cfg.eval_size, total)
    test_n = _count(cfg.test_size, total)
    train_n = total - eval_n - test_n if cfg.train_size is None else _count(cfg.train_size, total)
    if train_n < 1 or train_n + eval_n + test_n > total:
        raise DataError(f"{cfg.path}: {total} rows cannot give train {train_n}, eval {eval_n}, test {test_n} "
                        f"(data.train_size / eval_size / test_size)")
    train, rest = rows[:train_n], rows[train_n:]
    eval_rows = fixed_eval if fixed_eval is not None else rest[:eval_n]
    return train, eval_rows, rest[eval_n:eval_n + test_n]


def load_splits(data: DictConfig) -> Splits:
    """Train / eval / test rows from the synthetic task (a `label_noise` share of its training rows answered
    wrongly) or from `data.path` (shuffled by seed, capped by `max_samples`, eval from `data.eval_path` when
    given; used as they are)."""
    if data.path is None:
        sizes = [int(data.train_size), int(data.eval_size), int(data.test_size)]
        generate, fmt = SYNTHETIC_DATASETS[data.name]
        rows = generate(sum(sizes), data.seed, data.system_prompt)
        wrong = round(data.label_noise * sizes[0])
        train = with_wrong_answers(data.name, rows[:sizes[0]], wrong, data.seed)  # the eval / test rows stay right
        return Splits(train, rows[sizes[0]:sizes[0] + sizes[1]], rows[sizes[0] + sizes[1]:], fmt, wrong_answers=wrong)
    fmt, rows, skipped = normalize(read_records(data.path), data)
    random.Random(data.seed).shuffle(rows)
    rows = rows[:data.max_samples] if data.max_samples else rows
    fixed_eval = None
    if data.eval_path:
        eval_cfg = OmegaConf.merge(data, {"path": data.eval_path})  # its format is detected on its own
        _, fixed_eval, eval_skipped = normalize(read_records(data.eval_path), eval_cfg)
        skipped += eval_skipped
    train, eval_rows, test = _split_rows(rows, data, fixed_eval)
    return Splits(train, eval_rows, test, fmt, skipped)
