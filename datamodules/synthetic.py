"""A deterministic, generated sentiment-classification dataset (no download, no third-party data).

Sentences are built from templates: a subject, one or two opinion words and optional filler, e.g.
"the soundtrack was wonderful and quite moving" (label 1) or "honestly, the plot felt dull" (label 0).
A fraction of examples negate a positive word ("was not good" -> 0) so that the task needs more than word
lookup. The same ``seed`` always gives the same examples, on every machine.
"""

from __future__ import annotations

import random

POSITIVE = [
    "wonderful",
    "moving",
    "brilliant",
    "delightful",
    "superb",
    "charming",
    "gripping",
    "excellent",
    "beautiful",
    "clever",
    "funny",
    "touching",
    "great",
    "good",
    "enjoyable",
    "memorable",
]
NEGATIVE = [
    "dull",
    "boring",
    "awful",
    "tedious",
    "clumsy",
    "lifeless",
    "terrible",
    "bland",
    "messy",
    "forgettable",
    "painful",
    "weak",
    "bad",
    "poor",
    "annoying",
    "predictable",
]
SUBJECTS = [
    "the film",
    "the movie",
    "the plot",
    "the acting",
    "the soundtrack",
    "the script",
    "the ending",
    "the cast",
    "the direction",
    "the story",
    "this picture",
    "the dialogue",
]
VERBS = ["was", "is", "felt", "seemed", "turned out"]
OPENERS = ["", "", "honestly, ", "overall, ", "i thought ", "to be fair, ", "in the end, "]
INTENSIFIERS = ["", "", "quite ", "really ", "truly ", "rather "]


def make_sentiment_examples(n: int, seed: int) -> list[dict[str, object]]:
    """``n`` examples ``{"text": str, "label": int}`` (1 positive, 0 negative), balanced, deterministic."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        words = POSITIVE if label else NEGATIVE
        first = rng.choice(words)
        negate = rng.random() < 0.2
        if negate:  # "not <opposite word>" carries this label
            first = "not " + rng.choice(NEGATIVE if label else POSITIVE)
        text = f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(INTENSIFIERS)}{first}"
        if rng.random() < 0.5:
            text += f" and {rng.choice(INTENSIFIERS)}{rng.choice(words)}"
        out.append({"text": text, "label": label})
    rng.shuffle(out)
    return out
