"""The chitchat source (data=chitchat): the wheel's conversations as user/assistant chats, the loss on the
assistant's turns, malformed records named by file and id, splits by seed; and a CLI run on the tiny model."""

import json
from pathlib import Path

import pytest
from test_templates import labelled_spans
from transformers import AutoTokenizer

from conftest import FIXTURES, TINY, compose_config, only_run_dir, run_cli
from ftharness.config.validation import ConfigError, validate
from ftharness.data import sources
from ftharness.data.sources import DataError
from ftharness.data.splits import load_splits
from ftharness.data.tokenization import encode_chat
from ftharness.model.embedded import resolve_model_path

CHITCHAT = FIXTURES / "chitchat.json"  # six conversations in the wheel's layout, ids c1..c6


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# The fixture's chats: the opener is the user, consecutive messages are one turn, blank messages vanish (c5's
# blank turn merges kim's two turns), an unanswered last turn is dropped (c3), a lone speaker gives no row (c2).
EXPECTED = [
    [_user("Hello\nHow are you?"), _assistant("Good, you?"), _user("Fine"), _assistant("Nice")],
    [_user("hi"), _assistant("hey")],
    [_user("Do you like tea?"), _assistant("Yes\ngreen tea"), _user("Me too"), _assistant("Great")],
    [_user("Hi"), _assistant("Hello\nAre you there?")],
    [_user("Morning"), _assistant("Morning!")],
]


def _data(*overrides: str, path: Path = CHITCHAT):
    return compose_config("data=chitchat", f"data.path={path}", "data.eval_size=1", *overrides, tiny=False).data


def _chats(splits) -> list:
    return [row["messages"] for row in splits.train + splits.eval + splits.test]


def test_conversations_become_alternating_user_assistant_chats():
    splits = load_splits(_data())
    assert splits.format == "chitchat" and not splits.skipped
    assert (len(splits.train), len(splits.eval)) == (4, 1)
    assert sorted(_chats(splits), key=json.dumps) == sorted(EXPECTED, key=json.dumps)


def test_the_loss_covers_exactly_the_assistant_turns():
    cfg = compose_config()  # the tiny model's character-level ChatML tokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir)))
    for chat in _chats(load_splits(_data())):
        encoded = encode_chat(tokenizer, chat, max_length=4096)
        assert labelled_spans(tokenizer, encoded) == [f"{m['content']}<|im_end|>" for m in chat
                                                      if m["role"] == "assistant"]


def test_splits_are_deterministic_by_seed():
    first = [_chats(load_splits(_data("data.seed=3"))) for _ in range(2)]
    assert first[0] == first[1]
    assert _chats(load_splits(_data("data.seed=4"))) != first[0]


@pytest.mark.parametrize("record,reason", [
    ({"prompt": "tea?"}, "missing field `messages`"),
    ({"messages": "hello"}, "`messages` must be a list of turns, got str"),
    ({"messages": [{"text": "hi", "sender": "a"}]}, "turn 1 must be a list of messages, got dict"),
    ({"messages": [["hi"]]}, "turn 1: every message must be an object with `text` and `sender`"),
    ({"messages": [[{"sender": "a", "timestamp": "t"}]]}, "missing field `text`"),
    ({"messages": [[{"sender": "a", "text": 5}]]}, "turn 1: `text` must be a string, got int"),
    ({"messages": [[{"sender": s, "text": "hi"}] for s in "abc"]}, "3 speakers: a chat has two"),
    ("tea?", "expected an object, got str"),
])
def test_a_malformed_record_is_one_line_naming_file_and_id(tmp_path, record, reason):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({**json.loads(CHITCHAT.read_text()), "c4": record}))
    with pytest.raises(DataError) as error:
        load_splits(_data("data.strict=true", path=path))
    assert str(error.value) == f"{path}: record c4: {reason} (data.format=chitchat)"
    assert load_splits(_data(path=path)).skipped == [f"{path}: record c4: {reason}"]  # not strict: skipped, named


def test_the_preset_reads_the_wheel():
    splits = load_splits(compose_config("data=chitchat", tiny=False).data)
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (3953, 64, 0) and not splits.skipped
    for chat in _chats(splits):
        assert [m["role"] for m in chat] == ["user", "assistant"] * (len(chat) // 2)
        assert all(m["content"].strip() for m in chat)


def test_unknown_or_uninstalled_embedded_data_is_one_line(monkeypatch):
    allowed = r"data.path='embedded:nope' is invalid: .*embedded data \(embedded:chitchat\)"
    with pytest.raises(ConfigError, match=allowed):
        validate(compose_config("data=chitchat", "data.path=embedded:nope", tiny=False))
    monkeypatch.setitem(sources.EMBEDDED_DATA, "gone", ("no_such_package_xyz", "no-such-wheel==1.0", "data.json"))
    with pytest.raises(DataError, match=r"^embedded:gone: no_such_package_xyz is not installed: "
                                        r"pip install no-such-wheel==1.0$"):
        load_splits(compose_config("data=chitchat", "data.path=embedded:gone", tiny=False).data)


def test_the_cli_trains_on_chitchat(tmp_path):
    result = run_cli(*TINY, "data=chitchat", "data.test_size=0", "train.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["data"]["format"] == "chitchat" and summary["data"]["train"] == 48
    answers = json.loads((run_dir / "generations.json").read_text())
    assert len(answers) == 3 and all(a["reference"] for a in answers)  # held-out chats' first exchanges
