"""EmoLLM-shaped chat files generated in code: long multi-turn dialogues like the study's (3-4 turns, ~650
characters a dialogue, a system prompt on the first turn), deterministic by seed.

`chinese=True` draws from common Chinese characters, as the real study's data (SmolLM2's tokenizer makes
~2 tokens of each); the default draws ASCII words, which the tiny test model's character tokenizer knows.
    python tests/emollm_shaped.py out.json --dialogues 1596 --chinese
"""

import argparse
import json
import random
from pathlib import Path

CHINESE = ("的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
           "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实")
WORDS = ("I feel worried about my exams and cannot sleep well at night because the pressure keeps growing "
         "you are not alone many students feel this way let us try breathing slowly and writing down thoughts").split()
SYSTEM = "You are a caring psychological counsellor who listens first and answers gently."


def _text(rng: random.Random, characters: int, chinese: bool) -> str:
    if chinese:
        body = "".join(rng.choice(CHINESE) for _ in range(characters))
        return "，".join(body[i:i + 12] for i in range(0, len(body), 12)) + "。"
    words = []
    while sum(len(w) + 1 for w in words) < characters:
        words.append(rng.choice(WORDS))
    return " ".join(words).capitalize() + "."


def emollm_dialogues(count: int, seed: int = 0, turns: int = 4, characters: int = 650, chinese: bool = False):
    """`count` dialogues of `turns` turns and about `characters` characters, replies twice as long as inputs."""
    rng = random.Random(seed)
    per_turn = characters // turns
    dialogues = []
    for _ in range(count):
        conversation = [{"input": _text(rng, per_turn // 3, chinese), "output": _text(rng, 2 * per_turn // 3, chinese)}
                        for _ in range(turns)]
        conversation[0] = {"system": SYSTEM, **conversation[0]}
        dialogues.append({"conversation": conversation})
    return dialogues


def write_emollm_file(path: Path, count: int, **options) -> Path:
    path.write_text(json.dumps(emollm_dialogues(count, **options), ensure_ascii=False, indent=1), encoding="utf-8")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--dialogues", type=int, default=1596)
    parser.add_argument("--chinese", action="store_true")
    args = parser.parse_args()
    write_emollm_file(args.output, args.dialogues, chinese=args.chinese)
