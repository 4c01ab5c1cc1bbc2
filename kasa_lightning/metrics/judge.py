"""Instruction-following scores: reference-based ROUGE-L and an optional LLM-as-judge (MT-Bench single-answer
grading, 1-10) over any OpenAI-compatible endpoint.

* ``RougeL`` and ``rouge_l_scores``: ROUGE-L, defined in ``kasa_lightning.metrics.rouge`` and importable from here
  too.
* ``judge_answers(questions, answers, ...)``: asks a judge model (``POST {base_url}/chat/completions``) to rate each
  answer on a 1-10 scale with MT-Bench's single-answer grading prompts (FastChat ``judge_prompts.jsonl``:
  ``single-v1``, and ``single-math-v1`` when a reference answer is given, ``single-v1-multi-turn`` /
  ``single-math-v1-multi-turn`` for second turns). The judge must answer with ``[[rating]]``; the rating is read
  with the pattern ``[[number]]`` (then ``[number]`` as a fallback), a reply without one (or out of 1-10) is
  asked again up to ``max_attempts`` times, after which the score is ``None``.
  The endpoint, model and key come from the arguments or ``KASA_JUDGE_BASE_URL``, ``KASA_JUDGE_MODEL`` and
  ``KASA_JUDGE_API_KEY`` (the key is optional: local vLLM / llama.cpp servers need none).
  Only the standard library is used (``urllib``).

Command line (answers in FastChat's answer-file layout, or ``predict`` lines with ``prompt`` and ``output``)::

    python -m kasa_lightning.metrics.judge --questions question.jsonl --answers answers.jsonl --output scores.jsonl

It writes one line per answer with ``score`` (judge, or null) and ``rougeL`` (where a reference exists), and prints
the means. Without an endpoint it says so on stderr, still writes the ROUGE-L scores, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kasa_lightning.metrics.rouge import RougeL, rouge_l_scores  # noqa: F401 (RougeL: re-exported)

log = logging.getLogger(__name__)

ENV_BASE_URL = "KASA_JUDGE_BASE_URL"
ENV_MODEL = "KASA_JUDGE_MODEL"
ENV_API_KEY = "KASA_JUDGE_API_KEY"

# MT-Bench categories whose questions are graded against a reference answer (FastChat: NEED_REF_CATS)
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")

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
        "with the reference answer. Identify and correct any mistakes. Be as objective as possible. " + _FORMAT_RULE
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


class JudgeNotConfiguredError(RuntimeError):
    """No judge endpoint or model was given (arguments or environment)."""


class JudgeRequestError(RuntimeError):
    """The judge endpoint refused a request (HTTP 4xx other than 429, or a malformed reply)."""


# --------------------------------------------------------------------------- LLM judge
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


def judge_settings(base_url: str | None = None, model: str | None = None,
                   api_key: str | None = None) -> tuple[str, str, str | None]:
    """(base_url, model, api_key) from the arguments, else the environment; raises ``JudgeNotConfiguredError``."""
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    model = model or os.environ.get(ENV_MODEL) or None
    api_key = api_key or os.environ.get(ENV_API_KEY) or None
    missing = [name for name, value in ((f"base_url ({ENV_BASE_URL})", base_url), (f"model ({ENV_MODEL})", model))
               if not value]
    if missing:
        raise JudgeNotConfiguredError(
            "no LLM judge endpoint configured: missing " + " and ".join(missing) + ". Point it at an "
            "OpenAI-compatible server, e.g. KASA_JUDGE_BASE_URL=https://api.openai.com/v1 KASA_JUDGE_MODEL=gpt-4o "
            f"{ENV_API_KEY}=... (or --base-url/--model/--api-key). Reference-based ROUGE-L scores "
            "(rouge_l_scores) need no endpoint."
        )
    return base_url.rstrip("/"), model, api_key


def judge_messages(question: str | Sequence[str], answer: str | Sequence[str],
                   reference: str | Sequence[str | None] | None = None) -> list[dict[str, str]]:
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
        fields = {"question_1": question[0], "question_2": question[1], "answer_1": answer[0],
                  "answer_2": answer[1], "reference_1": refs[0] or "", "reference_2": refs[1] or ""}
    prompt = PROMPTS[name]
    return [{"role": "system", "content": prompt["system"]},
            {"role": "user", "content": prompt["user"].format(**fields)}]


def _post(url: str, payload: dict[str, Any], api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (user-configured endpoint)
        return json.loads(response.read().decode("utf-8"))


def _judge_one(messages: list[dict[str, str]], url: str, model: str, api_key: str | None, max_attempts: int,
               timeout: float, retry_sleep: float, temperature: float, max_tokens: int) -> tuple[float | None, str]:
    payload = {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    reply = ""
    for attempt in range(1, max_attempts + 1):
        try:
            body = _post(url, payload, api_key, timeout)
        except urllib.error.HTTPError as err:
            if err.code != 429 and 400 <= err.code < 500:
                detail = err.read().decode("utf-8", "replace")[:500]
                raise JudgeRequestError(f"judge endpoint {url} answered HTTP {err.code}: {detail}") from err
            log.warning("judge request failed (HTTP %s), attempt %d/%d", err.code, attempt, max_attempts)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            log.warning("judge request failed (%s), attempt %d/%d", err, attempt, max_attempts)
        else:
            try:
                reply = body["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError) as err:
                raise JudgeRequestError(f"judge endpoint {url} returned no choices[0].message.content: "
                                        f"{str(body)[:300]}") from err
            rating = parse_rating(reply)
            if rating is not None:
                return rating, reply
            log.warning("judge reply has no [[rating]] in 1-10, attempt %d/%d: %r", attempt, max_attempts, reply[:200])
        if attempt < max_attempts and retry_sleep > 0:
            time.sleep(retry_sleep * attempt)
    return None, reply


def judge_answers(
    questions: Sequence[str | Sequence[str]],
    answers: Sequence[str | Sequence[str]],
    references: Sequence[str | Sequence[str | None] | None] | None = None,
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    max_attempts: int = 3,
    timeout: float = 120.0,
    retry_sleep: float = 1.0,
    temperature: float = 0.0,
    max_tokens: int = 2048,
    concurrency: int = 1,
    return_replies: bool = False,
) -> list[float | None] | tuple[list[float | None], list[str]]:
    """Rate every answer 1-10 with an LLM judge (MT-Bench single-answer grading); ``None`` where no rating could
    be read after ``max_attempts`` replies (or requests) failed.

    Args:
        questions, answers: one string per item (first turn), or a (turn 1, turn 2) pair to grade the second turn.
        references: optional reference answers (str, or a per-turn pair); with one the math/reasoning/coding
            prompt (compare with the reference) is used.
        base_url, model, api_key: the OpenAI-compatible endpoint (``.../v1``); default: the environment variables
            ``KASA_JUDGE_BASE_URL``, ``KASA_JUDGE_MODEL``, ``KASA_JUDGE_API_KEY``.
        max_attempts: requests per item at most (a reply without a rating or a 5xx/429/network error is retried).
        concurrency: parallel requests.
        return_replies: also return the judge's last reply per item.
    """
    if len(questions) != len(answers):
        raise ValueError(f"judge_answers: {len(questions)} questions but {len(answers)} answers")
    if references is not None and len(references) != len(answers):
        raise ValueError(f"judge_answers: {len(references)} references but {len(answers)} answers")
    if max_attempts < 1:
        raise ValueError(f"max_attempts={max_attempts} must be >= 1")
    base_url, model, api_key = judge_settings(base_url, model, api_key)
    url = f"{base_url}/chat/completions"
    refs = list(references) if references is not None else [None] * len(answers)
    jobs = [judge_messages(q, a, r) for q, a, r in zip(questions, answers, refs)]

    def run(messages: list[dict[str, str]]) -> tuple[float | None, str]:
        return _judge_one(messages, url, model, api_key, max_attempts, timeout, retry_sleep, temperature, max_tokens)

    if concurrency > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(job) for job in jobs]
    scores = [score for score, _ in results]
    if any(score is None for score in scores):
        log.warning("judge: %d of %d answers got no rating", sum(s is None for s in scores), len(scores))
    return (scores, [reply for _, reply in results]) if return_replies else scores


# --------------------------------------------------------------------------- command line
def _read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    return rows


def _answer_turns(row: dict[str, Any]) -> list[str]:
    if "choices" in row:  # FastChat answer file
        return list(row["choices"][0]["turns"])
    if "output" in row:
        return [row["output"]]
    raise ValueError(f"answer line has neither 'choices' (FastChat layout) nor 'output': keys {sorted(row)}")


def build_items(questions: list[dict[str, Any]] | None, answers: list[dict[str, Any]],
                turn: int = 1) -> list[dict[str, Any]]:
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
            turns, given = list(question["turns"]), _answer_turns(row)
            if len(given) < turn:
                raise ValueError(f"answer for question {row['question_id']} has {len(given)} turn(s); turn {turn} "
                                 "was asked for")
            ref = question.get("reference") if question.get("category") in REFERENCE_CATEGORIES else None
            if turn == 1:
                q, a, r = turns[0], given[0], (ref[0] if ref else None)
            else:
                q, a, r = turns[:2], given[:2], (list(ref[:2]) if ref and len(ref) >= 2 else None)
            items.append({"key": {"question_id": row["question_id"], "turn": turn}, "question": q, "answer": a,
                          "reference": r, "model_id": row.get("model_id")})
        else:
            missing = [k for k in ("prompt", "output") if k not in row]
            if missing:
                raise ValueError(f"answer line {index + 1} lacks {missing}; without --questions every line needs "
                                 "'prompt' and 'output'")
            key = {k: row[k] for k in ("question_id", "prompt_id", "index", "category") if k in row}
            items.append({"key": key or {"index": index}, "question": row["prompt"], "answer": row["output"],
                          "reference": row.get("reference"), "model_id": row.get("model_id")})
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kasa_lightning.metrics.judge",
                                     description="Score answers with an LLM judge (MT-Bench single-answer grading) "
                                     "and ROUGE-L.")
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

    questions = _read_jsonl(args.questions) if args.questions else None
    items = build_items(questions, _read_jsonl(args.answers), turn=args.turn)

    def last(x: Any) -> Any:
        return x[-1] if isinstance(x, (list, tuple)) else x

    rouge = rouge_l_scores([last(it["answer"]) for it in items], [last(it["reference"]) for it in items])
    status, scores, replies = 0, [None] * len(items), [None] * len(items)
    judge_model = None
    try:
        _, judge_model, _ = judge_settings(args.base_url, args.model, args.api_key)
        scores, replies = judge_answers(
            [it["question"] for it in items], [it["answer"] for it in items], [it["reference"] for it in items],
            base_url=args.base_url, model=args.model, api_key=args.api_key, max_attempts=args.max_attempts,
            concurrency=args.concurrency, timeout=args.timeout, retry_sleep=args.retry_sleep, return_replies=True)
    except JudgeNotConfiguredError as err:
        print(f"LLM judge skipped: {err}", file=sys.stderr)
        status = 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for item, score, reply, rl in zip(items, scores, replies, rouge):
            line = {**item["key"], "model_id": item["model_id"], "judge": judge_model, "score": score,
                    "rougeL": rl, "judgment": reply}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    rated = [s for s in scores if s is not None]
    with_ref = [r for r in rouge if r is not None]
    print(f"{len(items)} answers -> {out}")
    if rated:
        print(f"judge ({judge_model}) mean score: {sum(rated) / len(rated):.3f} over {len(rated)} rated"
              + (f" ({len(items) - len(rated)} unparsable)" if len(rated) < len(items) else ""))
    if with_ref:
        print(f"ROUGE-L F mean: {sum(with_ref) / len(with_ref):.4f} over {len(with_ref)} answers with a reference")
    return status


if __name__ == "__main__":
    sys.exit(main())
