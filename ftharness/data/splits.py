"""Data splits: train, eval and test rows, from the synthetic task or from the user's data.

The synthetic task (ftharness/data/synthetic.py) is generated to the configured sizes; the user's data is read
(ftharness/data/sources.py), normalized (ftharness/data/formats.py), shuffled by seed and split by count or
share, its eval rows taken from `data.eval_path` when given.
"""

import random
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ftharness.data.formats import SHOWN_SKIPS, normalize
from ftharness.data.sources import DataError, read_records
from ftharness.data.synthetic import SYNTHETIC_DATASETS, with_wrong_answers


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
