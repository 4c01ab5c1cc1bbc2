"""An LLM judge over any OpenAI-compatible endpoint (``POST {base_url}/chat/completions``), standard library only
(``urllib``): settings from arguments or the environment, retries on 429/5xx/network errors and on replies
without a rating, optional parallel requests."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kasa_lightning.metrics.judge_prompts import judge_messages, parse_rating

log = logging.getLogger(__name__)

ENV_BASE_URL = "KASA_JUDGE_BASE_URL"
ENV_MODEL = "KASA_JUDGE_MODEL"
ENV_API_KEY = "KASA_JUDGE_API_KEY"


class JudgeNotConfiguredError(RuntimeError):
    """No judge endpoint or model was given (arguments or environment)."""


class JudgeRequestError(RuntimeError):
    """The judge endpoint refused a request (HTTP 4xx other than 429, or a malformed reply)."""


def judge_settings(
    base_url: str | None = None, model: str | None = None, api_key: str | None = None
) -> tuple[str, str, str | None]:
    """(base_url, model, api_key) from the arguments, else the environment; raises ``JudgeNotConfiguredError``."""
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    model = model or os.environ.get(ENV_MODEL) or None
    api_key = api_key or os.environ.get(ENV_API_KEY) or None
    missing = [
        name for name, value in ((f"base_url ({ENV_BASE_URL})", base_url), (f"model ({ENV_MODEL})", model)) if not value
    ]
    if missing:
        raise JudgeNotConfiguredError(
            "no LLM judge endpoint configured: missing " + " and ".join(missing) + ". Point it at an "
            "OpenAI-compatible server, e.g. KASA_JUDGE_BASE_URL=https://api.openai.com/v1 KASA_JUDGE_MODEL=gpt-4o "
            f"{ENV_API_KEY}=... (or --base-url/--model/--api-key). Reference-based ROUGE-L scores "
            "(rouge_l_scores) need no endpoint."
        )
    assert base_url is not None and model is not None  # refused above when missing
    return base_url.rstrip("/"), model, api_key


def _post(url: str, payload: dict[str, Any], api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (user-configured endpoint)
        return json.loads(response.read().decode("utf-8"))


def _judge_one(
    messages: list[dict[str, str]],
    url: str,
    model: str,
    api_key: str | None,
    max_attempts: int,
    timeout: float,
    retry_sleep: float,
    temperature: float,
    max_tokens: int,
) -> tuple[float | None, str]:
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
                raise JudgeRequestError(
                    f"judge endpoint {url} returned no choices[0].message.content: {str(body)[:300]}"
                ) from err
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
