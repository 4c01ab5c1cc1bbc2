"""MT-Bench single-answer grading prompts (FastChat ``judge_prompts.jsonl``: ``single-v1``, ``single-math-v1``
and their ``-multi-turn`` forms) and the reading of a judge's ``[[rating]]``."""

from __future__ import annotations

import re
from collections.abc import Sequence

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")

# --------------------------------------------------------------------------- MT-Bench single-answer grading prompts
_FORMAT_RULE = (
    "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following "
    'this format: "[[rating]]", for example: "Rating: [[5]]".'
)
_GENERAL = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, "
    "accuracy, depth, creativity, and level of detail of the response."
)
_WITH_REFERENCE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question displayed below. Your evaluation should consider correctness and helpfulness. You will be "
    "given a reference answer and the assistant's answer."
)
PROMPTS: dict[str, dict[str, str]] = {
    "single-v1": {
        "system": "You are a helpful assistant.",
        "user": "[Instruction]\n" + _GENERAL + " Begin your evaluation by providing a short explanation. Be as "
        "objective as possible. " + _FORMAT_RULE + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]"
        "\n{answer}\n[The End of Assistant's Answer]",
    },
    "single-math-v1": {
        "system": "You are a helpful assistant.",
        "user": "[Instruction]\n" + _WITH_REFERENCE + " Begin your evaluation by comparing the assistant's answer "
        "with the reference answer. Identify and correct any mistakes. Be as objective as possible. "
        + _FORMAT_RULE
        + "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]"
        "\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    },
    "single-v1-multi-turn": {
        "system": _GENERAL + " You evaluation should focus on the assistant's answer to the second user question. "
        "Begin your evaluation by providing a short explanation. Be as objective as possible. " + _FORMAT_RULE + "\n\n",
        "user": "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
        "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
        "<|The End of Assistant A's Conversation with User|>",
    },
    "single-math-v1-multi-turn": {
        "system": _WITH_REFERENCE.replace("user question displayed below", "user question") + " You evaluation "
        "should focus on the assistant's answer to the second question. Begin your evaluation by comparing the "
        "assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as "
        "possible. " + _FORMAT_RULE + "\n\n",
        "user": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{reference_1}"
        "\n\n### User:\n{question_2}\n\n### Reference answer:\n{reference_2}\n\n<|The End of Reference Answer|>\n\n\n"
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
        "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
        "<|The End of Assistant A's Conversation with User|>",
    },
}


def parse_rating(text: str | None) -> float | None:
    """The 1-10 rating in a judge reply (``[[7]]``, fallback ``[7]``), or ``None``."""
    if not text:
        return None
    match = _RATING.search(text) or _RATING_FALLBACK.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if 1.0 <= value <= 10.0 else None


def judge_messages(
    question: str | Sequence[str], answer: str | Sequence[str], reference: str | Sequence[str | None] | None = None
) -> list[dict[str, str]]:
    """The chat messages asking for a single-answer grade. ``question``/``answer`` (and ``reference``) are strings
    for a first turn, or two-item sequences (turn 1, turn 2) to grade the second turn."""
    if isinstance(question, str) != isinstance(answer, str):
        raise ValueError("judge_messages: question and answer must both be strings or both be (turn 1, turn 2)")
    if isinstance(question, str):
        ref = reference if isinstance(reference, str) or reference is None else reference[0]
        name = "single-math-v1" if ref else "single-v1"
        fields = {"question": question, "answer": answer, "reference": ref or ""}
    else:
        if len(question) != 2 or len(answer) != 2:
            raise ValueError("judge_messages: multi-turn grading needs exactly two questions and two answers")
        refs = [None, None] if reference is None or isinstance(reference, str) else list(reference) + [None, None]
        name = "single-math-v1-multi-turn" if refs[0] and refs[1] else "single-v1-multi-turn"
        fields = {
            "question_1": question[0],
            "question_2": question[1],
            "answer_1": answer[0],
            "answer_2": answer[1],
            "reference_1": refs[0] or "",
            "reference_2": refs[1] or "",
        }
    prompt = PROMPTS[name]
    return [
        {"role": "system", "content": prompt["system"]},
        {"role": "user", "content": prompt["user"].format(**fields)},
    ]
