"""Commonsense reasoning (LLM-Adapters' Commonsense170K recipe): the Alpaca prompt, answer extraction, accuracy.

The evaluation rule is the one of LLM-Adapters' ``commonsense_evaluate.py``: the generated text is cut at
``"### Response:"`` (the part after the first marker, up to a second one if the model wrote it again), and the
prediction is the FIRST match of a per-dataset regular expression, compared with the gold ``answer`` string.
The patterns are case-sensitive and have no word boundaries, as in the original (``"untrue"`` reads as
``"true"``, ``"answer12"`` as ``"answer1"``); keep them so, or the numbers stop being comparable with the papers.

==============  ==================================================
dataset         pattern (first match wins)
==============  ==================================================
boolq           ``true|false``
piqa            ``solution1|solution2``
social_i_qa     ``answer1|answer2|answer3|answer4|answer5``
ARC-Challenge   same as social_i_qa
ARC-Easy        same as social_i_qa
openbookqa      same as social_i_qa
hellaswag       ``ending1|ending2|ending3|ending4``
winogrande      ``option1|option2``
==============  ==================================================
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torchmetrics

RESPONSE_MARKER = "### Response:"

_ANSWER_1_TO_5 = re.compile(r"answer1|answer2|answer3|answer4|answer5")
ANSWER_PATTERNS: dict[str, re.Pattern[str]] = {
    "boolq": re.compile(r"true|false"),
    "piqa": re.compile(r"solution1|solution2"),
    "social_i_qa": _ANSWER_1_TO_5,
    "hellaswag": re.compile(r"ending1|ending2|ending3|ending4"),
    "winogrande": re.compile(r"option1|option2"),
    "ARC-Challenge": _ANSWER_1_TO_5,
    "ARC-Easy": _ANSWER_1_TO_5,
    "openbookqa": _ANSWER_1_TO_5,
}
#: The eight test sets, in the order of the papers' tables.
COMMONSENSE_DATASETS: tuple[str, ...] = tuple(ANSWER_PATTERNS)

_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def commonsense_prompt(instruction: str, input: str = "") -> str:  # noqa: A002  (the field's name in the data)
    """The Alpaca prompt of LLM-Adapters, ending with ``"### Response:\\n"``; the target (``output``) follows it.

    With a non-empty ``input`` the ``"### Input:"`` variant is used. This is the clean Alpaca layout; LLM-Adapters'
    own source strings carry extra indentation (and, in ``finetune.py``, a stray ``# noqa: E501`` inside the
    string), which this template leaves out. Commonsense170K rows all have an empty ``input``.
    """
    if input:
        return _PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return _PROMPT.format(instruction=instruction)


def _pattern(dataset: str) -> re.Pattern[str]:
    try:
        return ANSWER_PATTERNS[dataset]
    except KeyError:
        raise ValueError(f"unknown commonsense dataset {dataset!r}; known: {', '.join(COMMONSENSE_DATASETS)}") from None


def extract_answer(dataset: str, text: str) -> str | None:
    """The predicted answer in a generated ``text`` for ``dataset`` (LLM-Adapters' rule), or None if none is found.

    If ``text`` contains ``"### Response:"``, only the part after the first marker (and before a second one) is
    searched, like LLM-Adapters' ``output.split("### Response:")[1]``. Raises ValueError for an unknown dataset.
    """
    pattern = _pattern(dataset)
    if RESPONSE_MARKER in text:
        text = text.split(RESPONSE_MARKER)[1]
    match = pattern.search(text.strip())
    return match.group(0) if match else None


class CommonsenseAccuracy(torchmetrics.Metric):
    """Exact-match accuracy of the extracted answers.

    ``update(predicted_texts, targets)``: ``predicted_texts`` are the generated continuations (the module decodes
    the new tokens only), ``targets`` dicts ``{"dataset": name, "answer": gold}``. ``compute()`` returns the
    accuracy as a float (0.0 before any update). Works across ranks (the counts are summed).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted_texts: list[str], targets: list[dict[str, Any]]) -> None:  # type: ignore[override]
        if len(predicted_texts) != len(targets):
            raise ValueError(
                f"CommonsenseAccuracy.update: {len(predicted_texts)} predicted texts but {len(targets)} targets"
            )
        correct = 0
        for text, target in zip(predicted_texts, targets):
            if not isinstance(target, dict) or "dataset" not in target or "answer" not in target:
                raise ValueError(
                    f"CommonsenseAccuracy.update: a target must be a dict with 'dataset' and 'answer', got {target!r}"
                )
            correct += int(extract_answer(target["dataset"], text) == target["answer"])
        self.correct += correct
        self.total += len(targets)

    def compute(self) -> float:  # type: ignore[override]
        total = int(self.total)
        return float(self.correct) / total if total else 0.0
