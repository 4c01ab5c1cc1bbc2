"""MT-Bench / FastChat files: JSON-lines reading, the answer-file layout (``choices[0].turns``) or this project's
``predict`` lines (``prompt``, ``output``), and pairing answers with their questions for grading.

The one reader of answer lines: ``InstructionDataModule`` (second-turn prompts from earlier answers) and the judge
command both use ``answer_turns``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

# MT-Bench categories whose questions are graded against a reference answer (FastChat: NEED_REF_CATS)
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped); a bad line is an error naming it."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    return rows


def answer_turns(row: dict[str, Any]) -> list[str]:
    """The answer turns of one answer line: FastChat's ``choices[0].turns`` or ``[output]``."""
    if "choices" in row:  # FastChat answer file
        return list(row["choices"][0]["turns"])
    if "output" in row:
        return [row["output"]]
    raise ValueError(f"answer line has neither 'choices' (FastChat layout) nor 'output': keys {sorted(row)}")


def build_items(
    questions: list[dict[str, Any]] | None, answers: list[dict[str, Any]], turn: int = 1
) -> list[dict[str, Any]]:
    """Pair answer lines with their questions: ``{"key", "question", "answer", "reference"}`` per answer.

    With ``questions`` (MT-Bench ``question.jsonl``), answers are matched by ``question_id``; the reference is used
    for math/reasoning/coding questions that have one. Without, each answer line must hold ``prompt`` and
    ``output`` (``reference`` optional), as ``InstructionDataModule`` writes for LlamaDuo / Alpaca data.
    """
    if turn not in (1, 2):
        raise ValueError(f"turn={turn}: MT-Bench has turns 1 and 2")
    by_id = {q["question_id"]: q for q in questions or []}
    items = []
    for index, row in enumerate(answers):
        if questions is not None:
            if "question_id" not in row:
                raise ValueError(f"answer line {index + 1} has no question_id to match with the questions file")
            question = by_id.get(row["question_id"])
            if question is None:
                raise ValueError(f"answer line {index + 1}: question_id {row['question_id']!r} is not in the questions")
            turns, given = list(question["turns"]), answer_turns(row)
            if len(given) < turn:
                raise ValueError(
                    f"answer for question {row['question_id']} has {len(given)} turn(s); turn {turn} was asked for"
                )
            ref = question.get("reference") if question.get("category") in REFERENCE_CATEGORIES else None
            q: str | list[str]
            a: str | list[str]
            r: str | list[str] | None
            if turn == 1:
                q, a, r = turns[0], given[0], (ref[0] if ref else None)
            else:
                q, a, r = turns[:2], given[:2], (list(ref[:2]) if ref and len(ref) >= 2 else None)
            items.append(
                {
                    "key": {"question_id": row["question_id"], "turn": turn},
                    "question": q,
                    "answer": a,
                    "reference": r,
                    "model_id": row.get("model_id"),
                }
            )
        else:
            missing = [k for k in ("prompt", "output") if k not in row]
            if missing:
                raise ValueError(
                    f"answer line {index + 1} lacks {missing}; without --questions every line needs "
                    "'prompt' and 'output'"
                )
            key = {k: row[k] for k in ("question_id", "prompt_id", "index", "category") if k in row}
            items.append(
                {
                    "key": key or {"index": index},
                    "question": row["prompt"],
                    "answer": row["output"],
                    "reference": row.get("reference"),
                    "model_id": row.get("model_id"),
                }
            )
    return items


def first_turn_answers(path: str | os.PathLike) -> dict[Any, str]:
    """``question_id -> first answer turn`` of an answer file (the context of MT-Bench's second turn)."""
    return {row["question_id"]: answer_turns(row)[0] for row in read_jsonl(path)}


def fastchat_answer(question_id: Any, category: str | None, model_id: str, turns: list[str]) -> dict[str, Any]:
    """One line of a FastChat answer file (``gen_model_answer.py``'s layout), as the judge and FastChat read it."""
    return {
        "question_id": question_id,
        "category": category,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(turns)}],
        "tstamp": time.time(),
    }
