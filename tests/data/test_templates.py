"""Assistant-only labels are exactly the replies plus their end-of-turn marker, for every named template and
the default model's own, for 1- and 3-turn chats with and without a system prompt."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import compose_config
from ftharness.data.templates import CHAT_TEMPLATES
from ftharness.data.tokenization import IGNORE_INDEX, encode_chat
from ftharness.model.embedded import resolve_model_path

REPLIES = ["2.5 is larger than 2.45.", "3.1 is larger.", "You're welcome."]
QUESTIONS = ["Which is larger, 2.5 or 2.45?", "And 3.1 or 3.09?", "Thanks!"]
# What each template prints around a reply, as the label span must cover it (eos: the tokenizer's).
SPAN = {
    "chatml": lambda reply, eos: f"{reply}<|im_end|>",
    "llama2": lambda reply, eos: f" {reply} {eos}",
    "llama3": lambda reply, eos: f"{reply}<|eot_id|>",
    "deepseek": lambda reply, eos: f" {reply}{eos}",
    "alpaca": lambda reply, eos: f"{reply}{eos}",
    "plain": lambda reply, eos: f"{reply}{eos}",
}


def _tokenizer(model: str, template=None):
    cfg = compose_config(f"model={model}")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir)))
    if template:
        tokenizer.chat_template = CHAT_TEMPLATES[template]
    return tokenizer


def _chat(turns: int, system: bool):
    chat = [{"role": "system", "content": "Be brief."}] if system else []
    for question, reply in zip(QUESTIONS[:turns], REPLIES[:turns]):
        chat += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return chat


def labelled_spans(tokenizer, encoded):
    """The decoded text of each run of unmasked labels (which must equal the input ids there)."""
    spans, current = [], []
    for token, label in zip(encoded["input_ids"] + [None], encoded["labels"] + [IGNORE_INDEX]):
        if label == IGNORE_INDEX:
            spans += [tokenizer.decode(current)] if current else []
            current = []
        else:
            assert label == token
            current.append(token)
    return spans


CASES = [(turns, system) for turns in (1, 3) for system in (False, True)]


@pytest.mark.parametrize("template", sorted(CHAT_TEMPLATES))
@pytest.mark.parametrize("turns,system", CASES)
def test_named_templates_label_exactly_the_replies(template, turns, system):
    tokenizer = _tokenizer("tiny", template)
    encoded = encode_chat(tokenizer, _chat(turns, system), max_length=4096)
    expected = [SPAN[template](reply, tokenizer.eos_token) for reply in REPLIES[:turns]]
    assert labelled_spans(tokenizer, encoded) == expected


@pytest.mark.parametrize("turns,system", CASES)
def test_train_on_last_labels_only_the_final_reply(turns, system):
    tokenizer = _tokenizer("tiny")
    encoded = encode_chat(tokenizer, _chat(turns, system), max_length=4096, train_on="last")
    assert labelled_spans(tokenizer, encoded) == [f"{REPLIES[turns - 1]}<|im_end|>"]


def test_train_on_everything_labels_every_token():
    tokenizer = _tokenizer("tiny")
    encoded = encode_chat(tokenizer, _chat(3, True), max_length=4096, train_on="everything")
    assert encoded["labels"] == encoded["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("turns,system", CASES)
def test_the_default_models_own_template_labels_exactly_the_replies(turns, system):
    tokenizer = _tokenizer("smollm2-135m")
    encoded = encode_chat(tokenizer, _chat(turns, system), max_length=4096)
    assert labelled_spans(tokenizer, encoded) == [f"{reply}<|im_end|>" for reply in REPLIES[:turns]]
