"""Greedy answers end on a whole character."""

from pathlib import Path

from transformers import AutoTokenizer

from conftest import compose_config
from ftharness.model.embedded import resolve_model_path
from ftharness.trial.evaluation import REPLACEMENT_CHARACTER, whole_characters


def test_an_answer_cut_inside_a_character_drops_its_broken_end():
    cfg = compose_config(tiny=False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir)))
    ids = tokenizer.encode("我很好", add_special_tokens=False)
    cut = tokenizer.decode(ids[:-1])  # SmolLM2 splits a Chinese character into byte-level tokens
    assert cut.endswith(REPLACEMENT_CHARACTER)
    assert whole_characters(cut) == "我很"
    assert whole_characters("我很好") == "我很好" and whole_characters("") == ""
