"""Instruction-following scores: reference-based ROUGE-L and an optional LLM-as-judge (MT-Bench single-answer
grading, 1-10) over any OpenAI-compatible endpoint.

* ``judge_answers(questions, answers, ...)``: asks a judge model (``POST {base_url}/chat/completions``) to rate each
  answer on a 1-10 scale with MT-Bench's single-answer grading prompts (FastChat ``judge_prompts.jsonl``:
  ``single-v1``, and ``single-math-v1`` when a reference answer is given, ``single-v1-multi-turn`` /
  ``single-math-v1-multi-turn`` for second turns). The judge must answer with ``[[rating]]``; the rating is read
  with the pattern ``[[number]]`` (then ``[number]`` as a fallback), a reply without one (or out of 1-10) is
  asked again up to ``max_attempts`` times, after which the score is ``None``.
  The endpoint, model and key come from the arguments or ``KASA_JUDGE_BASE_URL``, ``KASA_JUDGE_MODEL`` and
  ``KASA_JUDGE_API_KEY`` (the key is optional: local vLLM / llama.cpp servers need none).
  Only the standard library is used (``urllib``).

The parts live in ``judge_prompts`` (prompts, rating), ``judge_client`` (the endpoint) and ``mtbench`` (files);
this module is the command line and re-exports their public names.

Command line (answers in FastChat's answer-file layout, or ``predict`` lines with ``prompt`` and ``output``)::

    python -m kasa_lightning.metrics.judge --questions question.jsonl --answers answers.jsonl --output scores.jsonl

It writes one line per answer with ``score`` (judge, or null) and ``rougeL`` (where a reference exists), and prints
the means. Without an endpoint it says so on stderr, still writes the ROUGE-L scores, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kasa_lightning.metrics.judge_client import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    JudgeNotConfiguredError,
    JudgeRequestError,
    judge_answers,
    judge_settings,
)
from kasa_lightning.metrics.judge_prompts import PROMPTS, judge_messages, parse_rating
from kasa_lightning.metrics.mtbench import REFERENCE_CATEGORIES, build_items, read_jsonl
from kasa_lightning.metrics.rouge import rouge_l_scores

__all__ = [
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "PROMPTS",
    "REFERENCE_CATEGORIES",
    "JudgeNotConfiguredError",
    "JudgeRequestError",
    "build_items",
    "judge_answers",
    "judge_messages",
    "judge_settings",
    "main",
    "parse_rating",
    "rouge_l_scores",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kasa_lightning.metrics.judge",
        description="Score answers with an LLM judge (MT-Bench single-answer grading) and ROUGE-L.",
    )
    parser.add_argument("--answers", required=True, help="answers jsonl (FastChat layout or predict output)")
    parser.add_argument("--questions", help="MT-Bench question.jsonl (match answers by question_id)")
    parser.add_argument("--output", required=True, help="where to write one JSON line of scores per answer")
    parser.add_argument("--turn", type=int, default=1, choices=(1, 2), help="MT-Bench turn to grade")
    parser.add_argument("--base-url", help=f"OpenAI-compatible base URL (default ${ENV_BASE_URL})")
    parser.add_argument("--model", help=f"judge model (default ${ENV_MODEL})")
    parser.add_argument("--api-key", help=f"API key (default ${ENV_API_KEY})")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--retry-sleep", type=float, default=1.0)
    args = parser.parse_args(argv)

    questions = read_jsonl(args.questions) if args.questions else None
    items = build_items(questions, read_jsonl(args.answers), turn=args.turn)

    def last(x: Any) -> Any:
        return x[-1] if isinstance(x, (list, tuple)) else x

    rouge = rouge_l_scores([last(it["answer"]) for it in items], [last(it["reference"]) for it in items])
    scores: list[float | None] = [None] * len(items)
    replies: list[str | None] = [None] * len(items)
    status = 0
    judge_model = None
    try:
        _, judge_model, _ = judge_settings(args.base_url, args.model, args.api_key)
        scores, replies = judge_answers(  # type: ignore[assignment]  # a pair with return_replies=True
            [it["question"] for it in items],
            [it["answer"] for it in items],
            [it["reference"] for it in items],
            base_url=args.base_url,
            model=args.model,
            api_key=args.api_key,
            max_attempts=args.max_attempts,
            concurrency=args.concurrency,
            timeout=args.timeout,
            retry_sleep=args.retry_sleep,
            return_replies=True,
        )
    except JudgeNotConfiguredError as err:
        print(f"LLM judge skipped: {err}", file=sys.stderr)
        status = 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for item, score, reply, rl in zip(items, scores, replies, rouge):
            line = {
                **item["key"],
                "model_id": item["model_id"],
                "judge": judge_model,
                "score": score,
                "rougeL": rl,
                "judgment": reply,
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    rated = [s for s in scores if s is not None]
    with_ref = [r for r in rouge if r is not None]
    print(f"{len(items)} answers -> {out}")
    if rated:
        print(
            f"judge ({judge_model}) mean score: {sum(rated) / len(rated):.3f} over {len(rated)} rated"
            + (f" ({len(items) - len(rated)} unparsable)" if len(rated) < len(items) else "")
        )
    if with_ref:
        print(f"ROUGE-L F mean: {sum(with_ref) / len(with_ref):.4f} over {len(with_ref)} answers with a reference")
    return status


if __name__ == "__main__":
    sys.exit(main())
