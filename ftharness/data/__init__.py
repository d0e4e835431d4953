"""The data of a trial: where records come from (sources), the formats that turn them into rows (formats),
the train / eval / test splits (splits), the embedded synthetic tasks (synthetic), named chat templates
(templates), and token ids with assistant-only labels, cached on disk (tokenization)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "sources": ["DataError", "FILE_SUFFIXES", "read_records"],
    "formats": ["CHAT_FORMATS", "FORMATS", "normalize"],
    "splits": ["Splits", "load_splits"],
    "synthetic": ["SYNTHETIC_DATASETS", "SYNTHETIC_PROMPTS", "decimal_comparisons"],
    "templates": ["CHAT_TEMPLATES", "resolve_chat_template"],
    "tokenization": ["IGNORE_INDEX", "encode_chat", "make_collator", "tokenize_rows"],
})
