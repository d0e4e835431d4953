"""The synthetic task, chat files, and assistant-only labels on the tiny model's ChatML tokenizer."""

import json
from decimal import Decimal
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import compose_config
from ftharness.data import IGNORE_INDEX, DataError, decimal_comparisons, encode_chat, load_splits, read_chat_file, \
    tokenize_rows
from ftharness.embedded import resolve_model_path


@pytest.fixture(scope="module")
def tokenizer():
    cfg = compose_config()
    return AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir)))


def test_synthetic_rows_are_deterministic_distinct_and_right():
    rows = decimal_comparisons(300, seed=7)
    assert rows == decimal_comparisons(300, seed=7)
    assert rows != decimal_comparisons(300, seed=8)
    pairs = {frozenset((r["larger"], r["smaller"])) for r in rows}
    assert len(pairs) == 300 and frozenset(("9.11", "9.9")) not in pairs
    for row in rows:
        assert Decimal(row["larger"]) > Decimal(row["smaller"])
        reply = row["messages"][-1]["content"]
        assert reply == row["candidates"][row["label"]]
        assert reply.replace("Yes, ", "").replace("No, ", "").startswith(row["larger"])


def test_splits_have_configured_sizes_and_do_not_overlap():
    splits = load_splits(compose_config("data.train_size=30", "data.eval_size=5", "data.test_size=7"))
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (30, 5, 7)
    texts = [json.dumps(r["messages"]) for r in splits.train + splits.eval + splits.test]
    assert len(set(texts)) == len(texts)


def _reply_spans(tokenizer, encoded):
    """The decoded text of each run of unmasked labels."""
    spans, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label == IGNORE_INDEX:
            if current:
                spans.append(tokenizer.decode(current))
            current = []
        else:
            assert label == token
            current.append(token)
    return spans + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_labels_cover_exactly_each_assistant_reply_and_its_end_token(tokenizer, system):
    chat = [{"role": "user", "content": "Which is larger, 2.5 or 2.45?"},
            {"role": "assistant", "content": "2.5 is larger than 2.45."},
            {"role": "user", "content": "And 3.1 or 3.09?"},
            {"role": "assistant", "content": "3.1 is larger."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."}]
    if system:
        chat.insert(0, {"role": "system", "content": system})
    encoded = encode_chat(tokenizer, chat, max_length=1024)
    assert _reply_spans(tokenizer, encoded) == [
        "2.5 is larger than 2.45.<|im_end|>", "3.1 is larger.<|im_end|>", "You're welcome.<|im_end|>"]


def test_truncation_keeps_the_prompt_and_cuts_the_reply(tokenizer):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]
    full = encode_chat(tokenizer, chat, max_length=1024)
    cut = encode_chat(tokenizer, chat, max_length=len(full["input_ids"]) - 5)
    assert cut["input_ids"] == full["input_ids"][:len(cut["input_ids"])]
    assert _reply_spans(tokenizer, cut) == ["Hello there, frie"]  # cut: "nd.", <|im_end|>, "\n"


def test_chats_left_without_reply_are_dropped_and_all_dropped_is_an_error(tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "x" * 10}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "ok"}]}]
    dataset = tokenize_rows(tokenizer, rows, 60, tmp_path, "tiny")
    assert len(dataset) == 1
    with pytest.raises(DataError, match="data.max_length=10"):
        tokenize_rows(tokenizer, rows, 10, tmp_path, "tiny")


def test_tokenized_data_is_cached_on_disk_and_reused(tokenizer, tmp_path):
    rows = decimal_comparisons(20, seed=1)
    first = tokenize_rows(tokenizer, rows, 128, tmp_path, "tiny")
    cached = list((tmp_path / "tokenized").iterdir())
    assert len(cached) == 1
    again = tokenize_rows(tokenizer, rows, 128, tmp_path, "tiny")
    assert again.cache_files[0]["filename"].startswith(str(cached[0]))
    assert again["input_ids"] == first["input_ids"]
    tokenize_rows(tokenizer, rows, 64, tmp_path, "tiny")
    assert len(list((tmp_path / "tokenized").iterdir())) == 2  # another max_length is another entry


def test_chat_files_load_and_bad_rows_name_file_and_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert read_chat_file(path) == [good, good]
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"chats.jsonl:2: not valid JSON"):
        read_chat_file(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "only"}]}) + "\n")
    with pytest.raises(DataError, match=r"chats.jsonl:2: no assistant message"):
        read_chat_file(path)
    listed = tmp_path / "chats.json"
    listed.write_text(json.dumps([good, {"messages": [{"role": "bot", "content": "x"}]}]))
    with pytest.raises(DataError, match=r"chats.json:2: every message needs a role"):
        read_chat_file(listed)
    listed.write_text("[]")
    with pytest.raises(DataError, match="no rows"):
        read_chat_file(listed)
