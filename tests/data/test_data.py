"""Data sources, formats, bad rows and splits; tokenization cache and packing, on the tiny model."""

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import FIXTURES, compose_config
from ftharness.data.sources import DataError
from ftharness.data.splits import load_splits
from ftharness.data.synthetic import decimal_comparisons
from ftharness.data.tokenization import IGNORE_INDEX, encode_chat, make_collator, tokenize_rows
from ftharness.model.embedded import resolve_model_path

QUESTION = "Which is larger, 2.5 or 2.45?"
REPLY = "2.5 is larger than 2.45."


@pytest.fixture(scope="module")
def tiny_path():
    cfg = compose_config()
    return resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


def _data(*overrides: str):
    return compose_config("data=file", "data.eval_size=1", *overrides, tiny=False).data


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


def test_synthetic_splits_have_configured_sizes_and_do_not_overlap():
    splits = load_splits(compose_config("data.train_size=30", "data.eval_size=5", "data.test_size=7").data)
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (30, 5, 7)
    texts = [json.dumps(r["messages"]) for r in splits.train + splits.eval + splits.test]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("file,fmt", [("messages.jsonl", "messages"), ("sharegpt.jsonl", "sharegpt"),
                                      ("emollm.json", "emollm"), ("alpaca.json", "alpaca")])
def test_chat_formats_are_detected_and_become_messages(file, fmt):
    splits = load_splits(_data(f"data.path={FIXTURES / file}"))
    assert splits.format == fmt and not splits.skipped
    rows = splits.train + splits.eval
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
    replies = {m["content"] for row in rows for m in row["messages"] if m["role"] == "assistant"}
    assert REPLY in replies


def test_emollm_puts_the_system_prompt_only_first_and_keeps_every_turn():
    rows = load_splits(_data(f"data.path={FIXTURES / 'emollm.json'}", "data.eval_size=0")).train
    with_system = [r for r in rows if r["messages"][0]["role"] == "system"]
    assert len(with_system) == 1 and len(rows) == 3
    assert [m["role"] for m in with_system[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] * 2 for r in rows if r not in with_system)


def test_other_formats_normalize(tmp_path):
    text = load_splits(_data(f"data.path={FIXTURES / 'text.jsonl'}"))
    assert text.format == "text" and text.train[0]["text"].startswith("Q: ")
    preference = load_splits(_data(f"data.path={FIXTURES / 'preference.jsonl'}", "data.train_size=1"))
    row = (preference.train + preference.eval)[0]
    assert preference.format == "preference" and row["chosen"][0]["role"] == "assistant"
    labelled = load_splits(_data(f"data.path={FIXTURES / 'classification.csv'}",
                                 "data.label_names=[negative,positive]"))
    assert labelled.format == "classification"
    assert {r["text"]: r["label"] for r in labelled.train + labelled.eval}["this is terrible"] == 0


def test_columns_and_role_map_are_configurable(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"dialog": [{"from": "client", "value": QUESTION}, {"from": "bot", "value": REPLY}]})
                    + "\n")
    data = _data(f"data.path={path}", "data.format=sharegpt", "data.eval_size=0", "+data.columns.conversations=dialog",
                 "+data.role_map.client=user", "+data.role_map.bot=assistant")
    assert load_splits(data).train[0]["messages"][1] == {"role": "assistant", "content": REPLY}


def test_parquet_and_a_folder_of_files_load(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(FIXTURES / "messages.jsonl", folder / "a.jsonl")
    Dataset.from_list([json.loads(line) for line in (FIXTURES / "messages.jsonl").read_text().splitlines()]) \
        .to_parquet(str(folder / "b.parquet"))
    splits = load_splits(_data(f"data.path={folder}", "data.eval_size=0"))
    assert len(splits.train) == 12


BAD_ROWS = [
    ({"messages": [{"role": "user", "content": "only a question"}]}, "end with assistant"),
    ({"messages": []}, "empty conversation"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "alternate"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]}, "must be a string"),
    ({"prompt": "x"}, "missing field `messages`"),
]


@pytest.mark.parametrize("bad,reason", BAD_ROWS)
def test_bad_rows_are_skipped_counted_and_named_or_stop_when_strict(tmp_path, bad, reason):
    good = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": REPLY}]}
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, good, bad, good]) + "\n")
    splits = load_splits(_data(f"data.path={path}", "data.format=messages"))
    assert len(splits.train) + len(splits.eval) == 3
    assert splits.stats()["skipped"] == 1 and splits.skipped[0].startswith(f"{path}:3: ")
    assert reason in splits.skipped[0]
    with pytest.raises(DataError, match=f"^{path}:3: .*{reason}"):
        load_splits(_data(f"data.path={path}", "data.format=messages", "data.strict=true"))


@pytest.mark.parametrize("content,message", [("", "no records"), ("[1, 2", "not valid JSON"),
                                              ('{"a": 1}', "expected a JSON list")])
def test_empty_or_unparseable_files_stop(tmp_path, content, message):
    path = tmp_path / "chats.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_splits(_data(f"data.path={path}"))


def test_ratio_splits_max_samples_and_a_separate_eval_file():
    data = _data(f"data.path={FIXTURES / 'messages.jsonl'}", "data.eval_size=0.5", "data.max_samples=4")
    splits = load_splits(data)
    assert (len(splits.train), len(splits.eval)) == (2, 2)
    data = _data(f"data.path={FIXTURES / 'messages.jsonl'}", f"data.eval_path={FIXTURES / 'sharegpt.jsonl'}")
    splits = load_splits(data)
    assert (len(splits.train), len(splits.eval)) == (6, 6)


def test_too_few_rows_for_the_requested_splits_is_an_error():
    with pytest.raises(DataError, match="6 rows cannot give"):
        load_splits(_data(f"data.path={FIXTURES / 'messages.jsonl'}", "data.train_size=6"))


def test_truncation_keeps_the_prompt_and_cuts_the_reply(tokenizer):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]
    full = encode_chat(tokenizer, chat, max_length=1024)
    cut = encode_chat(tokenizer, chat, max_length=len(full["input_ids"]) - 5)  # cuts "nd.", <|im_end|>, "\n"
    assert cut["input_ids"] == full["input_ids"][:len(cut["input_ids"])]
    assert tokenizer.decode([t for t, label in zip(cut["input_ids"], cut["labels"]) if label != IGNORE_INDEX]) == \
        "Hello there, frie"


def test_rows_left_without_reply_are_dropped_and_all_dropped_is_an_error(tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "x" * 10}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "ok"}]}]
    assert len(tokenize_rows(tokenizer, rows, 60, "all", tmp_path, "tiny")) == 1
    with pytest.raises(DataError, match="data.max_length=10"):
        tokenize_rows(tokenizer, rows, 10, "all", tmp_path, "tiny")


def test_tokenized_data_is_cached_on_disk_and_reused(tokenizer, tmp_path):
    rows = decimal_comparisons(20, seed=1)
    first = tokenize_rows(tokenizer, rows, 128, "all", tmp_path, "tiny")
    cached = list((tmp_path / "tokenized").iterdir())
    assert len(cached) == 1
    again = tokenize_rows(tokenizer, rows, 128, "all", tmp_path, "tiny")
    assert again.cache_files[0]["filename"].startswith(str(cached[0]))
    assert again["input_ids"] == first["input_ids"]
    tokenize_rows(tokenizer, rows, 64, "all", tmp_path, "tiny")
    tokenize_rows(tokenizer, rows, 128, "last", tmp_path, "tiny")
    assert len(list((tmp_path / "tokenized").iterdir())) == 3  # another max_length or train_on: another entry


def test_text_rows_train_on_every_token(tokenizer, tmp_path):
    dataset = tokenize_rows(tokenizer, [{"text": "Q: 1.5 or 1.45? A: 1.5"}], 128, "all", tmp_path, "tiny")
    assert dataset[0]["labels"] == dataset[0]["input_ids"] and dataset[0]["input_ids"][-1] == tokenizer.eos_token_id


def test_packing_keeps_attention_within_each_row(tokenizer, tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    rows = [encode_chat(tokenizer, r["messages"], 128) for r in decimal_comparisons(3, seed=2)]
    packed = make_collator(tokenizer, packing=True)(rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [i for r in rows for i in range(len(r["input_ids"]))]
    with torch.no_grad():
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                              use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    assert torch.allclose(packed_logits, alone, atol=1e-5)
    starts = [sum(len(r["input_ids"]) for r in rows[:i]) for i in range(3)]
    assert all(packed["labels"][0, s].item() == IGNORE_INDEX for s in starts)  # no label across a boundary
