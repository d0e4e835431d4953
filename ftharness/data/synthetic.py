"""The embedded tasks, generated in code, deterministic by seed, no download.

"Is 9.11 larger than 9.9?" is the tutorials' example: small chat models answer it wrongly before
fine-tuning. Rows are chats with both possible replies (`candidates`) and the index of the right one
(`label`), so accuracy is scored by likelihood. The 9.11 / 9.9 pair itself never appears in any split,
so the before/after prompts about it are never trained on.

The decimal task is one rule, so memorising its training chats *is* learning it and more epochs never hurt.
`with_wrong_answers` makes a task that can overfit: a share of the training rows answered wrongly on purpose
(the eval and test rows stay right). The rule is learnt first, from the right majority; memorising the wrong
rows afterwards can only be done row by row, and it spoils the held-out answers.
"""

import random
from decimal import Decimal
from typing import Callable, Dict, List, Optional, Tuple

HELD_OUT_PAIRS = {frozenset((Decimal("9.11"), Decimal("9.9")))}


def _decimal_pairs(rng: random.Random):
    """Endless pairs `x.y` vs `x.yz` with the same integer part: the 9.11-vs-9.9 trap."""
    while True:
        whole = rng.randint(0, 20)
        one = Decimal(f"{whole}.{rng.randint(1, 9)}")
        two = Decimal(f"{whole}.{rng.randint(10, 99)}")
        if two % Decimal("0.1") == 0 or frozenset((one, two)) in HELD_OUT_PAIRS:
            continue
        yield (one, two) if rng.random() < 0.5 else (two, one)


def _decimal_row(x: Decimal, y: Decimal, rng: random.Random, system_prompt: Optional[str]) -> dict:
    big, small = max(x, y), min(x, y)
    if rng.random() < 0.5:
        question = rng.choice(["Which is larger, {x} or {y}?", "Which number is bigger: {x} or {y}?"])
        candidates = [f"{x} is larger than {y}.", f"{y} is larger than {x}."]
    else:
        question = "Is {x} larger than {y}?"
        candidates = [f"Yes, {x} is larger than {y}.", f"No, {y} is larger than {x}."]
    label = 0 if big == x else 1
    messages = [{"role": "user", "content": question.format(x=x, y=y)},
                {"role": "assistant", "content": candidates[label]}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"messages": messages, "candidates": candidates, "label": label, "larger": str(big), "smaller": str(small)}


def decimal_comparisons(total: int, seed: int, system_prompt: Optional[str] = None) -> List[dict]:
    """`total` distinct comparison chats, the same for the same seed; no number pair appears twice."""
    rng = random.Random(seed)
    pairs, seen, rows = _decimal_pairs(rng), set(), []
    while len(rows) < total:
        x, y = next(pairs)
        if frozenset((x, y)) not in seen:
            seen.add(frozenset((x, y)))
            rows.append(_decimal_row(x, y, rng, system_prompt))
    return rows


def decimal_preferences(total: int, seed: int, system_prompt: Optional[str] = None) -> List[dict]:
    """The same comparisons as preference pairs: the right reply chosen, the wrong one rejected."""
    rows = []
    for row in decimal_comparisons(total, seed, system_prompt):
        prompt = row["messages"][:-1]
        chosen, rejected = row["candidates"][row["label"]], row["candidates"][1 - row["label"]]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return rows


SUBJECTS = ["the film", "this phone", "the hotel", "our waiter", "the book", "this laptop", "the concert",
            "the new update", "that restaurant", "the museum", "my flight", "the course", "the game", "this app",
            "the train ride", "the coffee", "the landlord", "the gym", "this headset", "the tour guide"]
OPINIONS = {
    1: ["was wonderful", "exceeded every expectation", "is a delight to use", "made my day", "was worth every penny",
        "felt warm and welcoming", "is brilliant", "works beautifully"],
    0: ["was a waste of time", "broke after a day", "is painfully slow", "ruined the evening", "felt cold and rude",
        "is a disappointment", "was overpriced and dull", "keeps crashing"],
}


def sentiment_sentences(total: int, seed: int, system_prompt: Optional[str] = None) -> List[dict]:
    """Labelled review sentences (0 negative, 1 positive) for sequence classification; no sentence repeats,
    so a test sentence is never a training sentence."""
    combos = [(subject, opinion, label) for subject in SUBJECTS for label, opinions in OPINIONS.items()
              for opinion in opinions]
    if total > len(combos):
        raise ValueError(f"the sentiment task has {len(combos)} distinct sentences, {total} were asked for")
    random.Random(seed).shuffle(combos)
    return [{"text": f"{subject.capitalize()} {opinion}.", "label": label}
            for subject, opinion, label in combos[:total]]


def _wrong_decimal(row: dict) -> dict:
    wrong = 1 - row["label"]
    return {**row, "label": wrong, "messages": [*row["messages"][:-1],
                                                {"role": "assistant", "content": row["candidates"][wrong]}]}


def _wrong_preference(row: dict) -> dict:
    return {**row, "chosen": row["rejected"], "rejected": row["chosen"]}


def _wrong_sentiment(row: dict) -> dict:
    return {**row, "label": 1 - row["label"]}


WRONG_ANSWERS: Dict[str, Callable[[dict], dict]] = {  # name -> the row answered wrongly
    "decimal": _wrong_decimal, "decimal_preferences": _wrong_preference, "sentiment": _wrong_sentiment}


def with_wrong_answers(name: str, rows: List[dict], count: int, seed: int) -> List[dict]:
    """`rows` of the task `name` with `count` of them, picked by `seed`, answered wrongly."""
    wrong = set(random.Random(seed).sample(range(len(rows)), count))
    return [WRONG_ANSWERS[name](row) if index in wrong else row for index, row in enumerate(rows)]


# The embedded tasks' before/after questions (eval.prompts: null): about the pair no split contains.
DECIMAL_PROMPTS = ["Is 9.11 larger than 9.9?", "Which is larger, 9.11 or 9.9?", "Which number is bigger, 3.45 or 3.5?"]
SYNTHETIC_PROMPTS: Dict[str, List[str]] = {"decimal": DECIMAL_PROMPTS, "decimal_preferences": DECIMAL_PROMPTS,
                                          "sentiment": []}  # an encoder does not generate

# name -> (generator, the data format of its rows)
SYNTHETIC_DATASETS: Dict[str, Tuple[Callable[..., List[dict]], str]] = {
    "decimal": (decimal_comparisons, "messages"),  # chats with answer candidates (task=sft)
    "decimal_preferences": (decimal_preferences, "preference"),  # prompt / chosen / rejected (task=orpo)
    "sentiment": (sentiment_sentences, "classification"),  # text / label (task=classification)
}
