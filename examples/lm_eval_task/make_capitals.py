"""Write ``capitals.jsonl``, the data of the example lm-evaluation-harness task ``kasa_capitals`` (``capitals.yaml``):
one multiple-choice question per country, "What is the capital of <country>?", with the right capital and three
others chosen with a fixed seed, so the file is the same on every run.

    python examples/lm_eval_task/make_capitals.py
"""

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Greece": "Athens",
    "Sweden": "Stockholm",
    "Norway": "Oslo",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Ireland": "Dublin",
    "Hungary": "Budapest",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Thailand": "Bangkok",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Argentina": "Buenos Aires",
    "Australia": "Canberra",
}


def rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for country, capital in CAPITALS.items():
        others = rng.sample([c for c in CAPITALS.values() if c != capital], 3)
        choices = [*others, capital]
        rng.shuffle(choices)
        out.append({"country": country, "choices": choices, "label": choices.index(capital)})
    return out


def write(path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows()))


if __name__ == "__main__":
    target = Path(__file__).with_name("capitals.jsonl")
    write(target)
    print(f"wrote {len(CAPITALS)} questions to {target}")
