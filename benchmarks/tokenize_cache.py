"""Tokenization cost with and without the disk cache, as a sweep of N trials pays it.

    python benchmarks/tokenize_cache.py [--trials 4] [--rows 464] [--model smollm2-135m]

Trial 1 tokenizes (cold cache); trials 2..N load the cached dataset. Without the cache every trial
tokenizes again. Prints seconds per trial and the totals' ratio.
"""

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from ftharness.config.schema import register_schema
from ftharness.data.synthetic import decimal_comparisons
from ftharness.data.tokenization import tokenize_rows
from ftharness.model.embedded import resolve_model_path

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rows", type=int, default=464, help="train + eval rows of the default trial")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={args.model}"])
    path = resolve_model_path(cfg.model.name_or_path, Path(cfg.cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = decimal_comparisons(args.rows, seed=0)

    def timed(cache_dir: Path) -> float:
        start = time.perf_counter()
        tokenize_rows(tokenizer, rows, cfg.data.max_length, "all", cache_dir, path)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as cached, tempfile.TemporaryDirectory() as scratch:
        with_cache = [timed(Path(cached)) for _ in range(args.trials)]
        without = [timed(Path(scratch) / str(trial)) for trial in range(args.trials)]  # a new cache every time
    print("| trial | no cache (s) | disk cache (s) |\n|---|---|---|")
    for trial, (plain, cached_s) in enumerate(zip(without, with_cache), start=1):
        print(f"| {trial} | {plain:.2f} | {cached_s:.2f} |")
    print(f"| total | {sum(without):.2f} | {sum(with_cache):.2f} |")
    print(f"\n{args.rows} rows, {args.model}: the cache makes tokenization {sum(without) / sum(with_cache):.1f}x "
          f"cheaper over {args.trials} trials")


if __name__ == "__main__":
    main()
