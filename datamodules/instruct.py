"""``InstructionDataModule``: chat-formatted instruction data (LlamaDuo synthetic sets, Alpaca) for training, and
test prompts (LlamaDuo ``coverage_dataset``, MT-Bench questions) for generation, ROUGE-L and LLM-judge scoring.

Sources (``source`` names the training format; ``test_source`` the test format, inferred from the test columns
when not given):

* ``llamaduo``: rows with a chat ``messages`` list of ``{role, content}`` (Hub
  ``llama-duo/synth_<task>_dataset_dedup``, split ``train_sft_gpt4o``; tests: ``llama-duo/coverage_dataset``,
  split ``test_<task>``).
* ``alpaca``: rows ``{instruction, input, output}`` (Hub ``yahma/alpaca-cleaned``), turned into one user turn
  (``instruction``, then a blank line and ``input`` when non-empty) and one assistant turn (``output``).
* ``mt_bench``: FastChat's ``question.jsonl`` rows ``{question_id, category, turns[, reference]}``; prediction
  only. Multi-turn: MT-Bench's second turn needs the model's own first answer in the context, so it takes two
  ``predict`` runs: the first (``mt_bench_turn=1``, default) answers ``turns[0]``; the second
  (``mt_bench_turn=2, previous_answers=<the first answer file>``) renders ``[user turns[0], assistant <answer 1>,
  user turns[1]]`` and writes both turns into ``choices[0].turns``, as FastChat's ``gen_model_answer.py`` does.

``train_path``/``test_path`` are Hub dataset names (loaded with ``train_split``/``test_split``) or local files,
directories or globs of ``.json``/``.jsonl``/``.parquet`` (``load_dataset("json"|"parquet", data_files=...)``);
everything after loading is the same code path (``datasets.Dataset.map``, cached by a fingerprint of the data and
of every setting that changes the encoding).

Formatting and the assistant-only loss mask: ``datamodules/chat.py`` (``ChatEncoding``). The template's end-of-turn
text closes each assistant span; when it holds no stop token (eos, or a special end-of-turn token like
``<|im_end|>``/``<|eot_id|>``), the tokenizer's eos is appended after the last assistant turn (and labelled), and
those end-of-turn tokens are added to ``generate``'s ``eos_token_id``. Loading: ``datamodules/loading.py``;
MT-Bench answer files: ``kasa_lightning.metrics.mtbench``.

Rows without an assistant turn (Alpaca: a null or blank ``output``) are skipped and counted
(``stats["no_assistant"]``); messages after the last assistant turn are dropped; over-long conversations are
truncated from the left (the last assistant turn kept whole) or dropped, per ``overlength``, and counted; a last
assistant turn longer than ``max_length`` is always dropped. Prompts longer than ``max_length - max_new_tokens`` lose
their start.

Evaluation / prediction rows: the conversation up to its last user turn, rendered with
``add_generation_prompt=True``; ``targets`` = the reference assistant reply after it (or MT-Bench's ``reference``
for the turn), else ``None``; ``meta`` = ids (MT-Bench ``question_id``, ``category``; otherwise the row ``index``,
``prompt_id``/``category`` where present, the last user message as ``prompt`` and the ``reference``).
``format_prediction`` writes MT-Bench answers in FastChat's answer-file layout, other rows as
``{**meta, "output": text}``. Validation (``val_size`` rows held out of the training data with ``seed``) reports the
loss/perplexity (``val_mode="loss"``, default) or generates and scores ROUGE-L (``val_mode="generate"``).

The three row formats (LlamaDuo, Alpaca, MT-Bench with its two turns) share the encoding and bookkeeping here;
templates, loading and answer files live in their own modules.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Literal

from kasa_lightning.datamodules.causal import CausalLMDataModule
from kasa_lightning.datamodules.chat import CHATML_TEMPLATE, ChatEncoding, ChatTemplateError
from kasa_lightning.datamodules.loading import load_local_or_hub
from kasa_lightning.hub import is_local_path
from kasa_lightning.metrics.mtbench import fastchat_answer, first_turn_answers

__all__ = ["CHATML_TEMPLATE", "REQUIRED_COLUMNS", "ChatTemplateError", "InstructionDataModule"]

log = logging.getLogger(__name__)

Source = Literal["llamaduo", "alpaca", "mt_bench"]

# columns each format needs
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "llamaduo": ("messages",),
    "alpaca": ("instruction", "output"),
    "mt_bench": ("question_id", "category", "turns"),
}
DEFAULT_TRAIN_SPLIT = {"llamaduo": "train_sft_gpt4o", "alpaca": "train", "mt_bench": "train"}


class InstructionDataModule(ChatEncoding, CausalLMDataModule):
    """Instruction tuning with an assistant-only loss; see the module docstring.

    Args:
        source: training-data format, ``"llamaduo"`` (chat ``messages``), ``"alpaca"`` or ``"mt_bench"``
            (prediction only).
        train_path: Hub dataset name, or local file / directory / glob (or a list of them).
        test_path: the same for the test / predict prompts (e.g. ``llama-duo/coverage_dataset`` or FastChat's
            ``question.jsonl``).
        train_split: Hub split of ``train_path`` (default ``train_sft_gpt4o`` for LlamaDuo, else ``train``).
        test_split: Hub split of ``test_path`` (e.g. ``test_classify``; default ``test``).
        test_source: format of the test rows (default: inferred from its columns).
        val_size: rows held out of the training data for validation (a count, or a fraction < 1; 0: none).
        val_mode: ``"loss"`` (teacher-forced loss and perplexity) or ``"generate"`` (ROUGE-L of generations).
        chat_template: a Jinja chat template, ``"chatml"``, or ``None`` (the tokenizer's, else ChatML).
        system_prompt: a system message put first in conversations that have none.
        max_samples: use only the first N rows of each loaded dataset (smoke runs).
        model_id: ``model_id`` written into MT-Bench answer files.
        mt_bench_turn: MT-Bench turn to answer (1, or 2 with ``previous_answers``).
        previous_answers: FastChat answer file holding the first-turn answers (for ``mt_bench_turn=2``).
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).
        overlength, generation, tokenizer, batch_size, eval_batch_size, max_length, num_workers, seed: see
            ``CausalLMDataModule`` / ``BaseDataModule``; ``generation`` defaults to ``max_new_tokens=512`` and
            ``max_length`` to 1024.
    """

    ENCODING_VERSION = 2  # bump when the encoding changes (cached map results are then not reused)

    def __init__(
        self,
        source: Source = "llamaduo",
        train_path: str | list[str] | None = None,
        test_path: str | list[str] | None = None,
        train_split: str | None = None,
        test_split: str | None = None,
        test_source: Source | None = None,
        val_size: int | float = 0,
        val_mode: Literal["loss", "generate"] = "loss",
        chat_template: str | None = None,
        system_prompt: str | None = None,
        max_samples: int | None = None,
        model_id: str = "kasa",
        mt_bench_turn: int = 1,
        previous_answers: str | None = None,
        cache_dir: str | None = None,
        overlength: Literal["truncate", "drop"] = "truncate",
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_length", 1024)
        super().__init__(overlength=overlength, generation={"max_new_tokens": 512, **(generation or {})}, **kwargs)
        for name, value in (("source", source), ("test_source", test_source)):
            if value is not None and value not in REQUIRED_COLUMNS:
                raise ValueError(f"data.{name}={value!r}: choose one of {sorted(REQUIRED_COLUMNS)}")
        if val_mode not in ("loss", "generate"):
            raise ValueError(f"data.val_mode={val_mode!r}: choose 'loss' or 'generate'")
        if val_size < 0 or (isinstance(val_size, float) and not val_size.is_integer() and val_size >= 1):
            raise ValueError(f"data.val_size={val_size}: a row count >= 0 or a fraction in (0, 1)")
        if mt_bench_turn not in (1, 2):
            raise ValueError(f"data.mt_bench_turn={mt_bench_turn}: MT-Bench has turns 1 and 2")
        if mt_bench_turn == 2 and not previous_answers:
            raise ValueError("data.mt_bench_turn=2 needs data.previous_answers (the answer file of turn 1)")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"data.max_samples={max_samples} must be >= 1")
        self.source = source
        self.train_path, self.test_path = train_path, test_path
        self.train_split = train_split or DEFAULT_TRAIN_SPLIT[source]
        self.test_split = test_split or "test"
        self.test_source = test_source
        self.val_size, self.val_mode = val_size, val_mode
        self.chat_template_arg = chat_template
        self.system_prompt = system_prompt
        self.max_samples = max_samples
        self.model_id = model_id
        self.mt_bench_turn = mt_bench_turn
        self.previous_answers = previous_answers
        self.cache_dir = cache_dir
        self.stats.update({"no_assistant": 0, "no_user": 0})
        self.split_stats: dict[str, dict[str, int]] = {}
        self._test_format: str | None = None
        self._turn_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    def _load(self, path: str | list[str], split: str, role: str) -> Any:
        data = load_local_or_hub(path, split, f"data.{role}_path", self.cache_dir)
        if self.max_samples is not None:
            data = data.select(range(min(self.max_samples, len(data))))
        return data

    def prepare_data(self) -> None:
        """Download Hub datasets once (rank 0); ``setup`` then reads them from the cache."""
        for path, split, role in (
            (self.train_path, self.train_split, "train"),
            (self.test_path, self.test_split, "test"),
        ):
            if isinstance(path, str) and not is_local_path(path):
                self._load(path, split, role)

    def _format_of(self, data: Any, declared: str | None, role: str) -> str:
        columns = set(data.column_names)
        if declared is None:
            for fmt in ("mt_bench", "llamaduo", "alpaca"):
                if set(REQUIRED_COLUMNS[fmt]) <= columns:
                    return fmt
            raise ValueError(
                f"data.{role}_path: cannot tell the format from columns {sorted(columns)}; expected "
                + "; or ".join(f"{fmt}: {list(cols)}" for fmt, cols in REQUIRED_COLUMNS.items())
                + f" (or set data.{role}_source)"
            )
        missing = [c for c in REQUIRED_COLUMNS[declared] if c not in columns]
        if missing:
            raise ValueError(
                f"data.{role}_path: the {declared!r} format needs column(s) {missing}, which the data "
                f"lacks (it has {sorted(columns)})"
            )
        return declared

    # ------------------------------------------------------------------ rows -> conversations
    def _conversation(self, row: dict[str, Any], fmt: str) -> list[dict[str, str]]:
        if fmt == "llamaduo":
            messages = row["messages"]
            if not isinstance(messages, list):
                raise ValueError(f"'messages' must be a list of {{role, content}}, got {type(messages).__name__}")
            conv = []
            for m in messages:
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise ValueError(f"every message needs 'role' and 'content'; got {m!r}")
                conv.append({"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])})
        elif fmt == "alpaca":
            user = str(row["instruction"] or "")
            extra = row.get("input")
            if extra:
                user = f"{user}\n\n{extra}"
            conv = [{"role": "user", "content": user}]
            if row["output"] is not None and str(row["output"]).strip():  # a blank reply teaches nothing
                conv.append({"role": "assistant", "content": str(row["output"])})
        else:
            raise ValueError("MT-Bench questions are for prediction only; train on llamaduo or alpaca data")
        if self.system_prompt and (not conv or conv[0]["role"] != "system"):
            conv.insert(0, {"role": "system", "content": self.system_prompt})
        return conv

    def _eval_example(self, row: dict[str, Any], fmt: str, index: int) -> tuple[list[dict[str, str]] | None, Any, dict]:
        """(prompt conversation, target, meta) of one evaluation row."""
        if fmt == "mt_bench":
            turns = list(row["turns"])
            refs = row.get("reference") or []
            meta: dict[str, Any] = {"question_id": row["question_id"], "category": row["category"]}
            conv = [{"role": "user", "content": str(turns[0])}]
            if self.mt_bench_turn == 2:
                if len(turns) < 2:
                    return None, None, meta
                first = self._previous_answers().get(row["question_id"])
                if first is None:
                    raise ValueError(f"data.previous_answers has no answer for MT-Bench question {row['question_id']}")
                conv += [{"role": "assistant", "content": first}, {"role": "user", "content": str(turns[1])}]
                meta["previous_turns"] = [first]
            if self.system_prompt:
                conv.insert(0, {"role": "system", "content": self.system_prompt})
            target = refs[self.mt_bench_turn - 1] if len(refs) >= self.mt_bench_turn else None
            return conv, target, meta
        conv = self._conversation(row, fmt)
        last_user = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=None)
        meta = {"index": index, **{k: row[k] for k in ("prompt_id", "category") if row.get(k) is not None}}
        if last_user is None:
            return None, None, meta
        following = conv[last_user + 1] if last_user + 1 < len(conv) else None
        target = following["content"] if following is not None and following["role"] == "assistant" else None
        meta.update({"prompt": conv[last_user]["content"], "reference": target})
        return conv[: last_user + 1], target, meta

    def _previous_answers(self) -> dict[Any, str]:
        if not hasattr(self, "_prev_cache"):
            assert self.previous_answers is not None  # called only for data.previous_answers
            self._prev_cache = first_turn_answers(os.path.expanduser(self.previous_answers))
        return self._prev_cache

    def _fingerprint_of(self, data: Any, *parts: Any) -> str:
        return self.map_fingerprint(data, self.chat_template, self.system_prompt, *parts)

    def _encode_train(self, data: Any, fmt: str, split: str) -> Any:
        def encode(batch: dict[str, list]) -> dict[str, list]:
            out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "status": []}
            for i in range(len(next(iter(batch.values())))):
                row = {k: v[i] for k, v in batch.items()}
                enc, status = self.encode_chat(self._conversation(row, fmt))
                enc = enc or {"input_ids": [], "attention_mask": [], "labels": []}
                for key in ("input_ids", "attention_mask", "labels"):
                    out[key].append(enc[key])
                out["status"].append(status)
            return out

        encoded = data.map(
            encode,
            batched=True,
            remove_columns=data.column_names,
            new_fingerprint=self._fingerprint_of(data, "train", fmt),
            desc=f"tokenize {split}",
        )
        return self._keep(encoded, split)

    def _encode_eval(self, data: Any, fmt: str, split: str) -> Any:
        budget = self.max_length - int(self.generation_kwargs.get("max_new_tokens", 0))

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            out: dict[str, list] = {"input_ids": [], "attention_mask": [], "targets": [], "meta_json": [], "status": []}
            for i, index in enumerate(indices):
                row = {k: v[i] for k, v in batch.items()}
                conv, target, meta = self._eval_example(row, fmt, index)
                ids, status = [], "no_user"
                if conv is not None:
                    ids, status = self._ids(self.render(conv, add_generation_prompt=True)), "ok"
                    if len(ids) > budget > 0:
                        ids, status = ids[len(ids) - budget :], "truncated"
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["targets"].append(target)
                out["meta_json"].append(json.dumps(meta, ensure_ascii=False, default=str))
                out["status"].append(status)
            return out

        encoded = data.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=data.column_names,
            new_fingerprint=self._fingerprint_of(data, "eval", fmt, budget, self.mt_bench_turn, self._prev_key()),
            desc=f"tokenize {split}",
        )
        return self._keep(encoded, split)

    def _prev_key(self) -> Any:
        if not self.previous_answers or self.mt_bench_turn != 2:
            return None
        path = os.path.expanduser(self.previous_answers)
        stat = os.stat(path)
        return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)

    def _keep(self, encoded: Any, split: str) -> Any:
        """Count the statuses, log skipped rows, and keep the usable ones."""
        statuses = encoded["status"]
        counts = Counter(statuses)
        self.split_stats[split] = dict(counts)
        for key in ("truncated", "dropped", "no_assistant", "no_user"):
            self.stats[key] = self.stats.get(key, 0) + counts.get(key, 0)
        reasons = {
            "no_assistant": "without an assistant turn (nothing to learn)",
            "no_user": "without a user turn (no prompt)",
            "dropped": f"over max_length={self.max_length} tokens (overlength={self.overlength!r})",
        }
        for reason, what in reasons.items():
            if counts.get(reason):
                rows = [i for i, s in enumerate(statuses) if s == reason]
                log.warning(
                    "%s split: skipped %d row(s) %s: rows %s%s",
                    split,
                    len(rows),
                    what,
                    rows[:10],
                    " ..." if len(rows) > 10 else "",
                )
        if counts.get("truncated"):
            log.info(
                "%s split: truncated %d over-long row(s) (overlength=%r)", split, counts["truncated"], self.overlength
            )
        keep = [i for i, s in enumerate(statuses) if s in ("ok", "truncated")]
        encoded = encoded.select(keep) if len(keep) < len(statuses) else encoded
        return encoded.remove_columns("status")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            if self.train_path is None:
                raise ValueError("data.train_path is not set: give a Hub dataset name or local json/jsonl files")
            if self.source == "mt_bench":
                raise ValueError(
                    "data.source='mt_bench' is prediction only: train with source 'alpaca' (or "
                    "'llamaduo') and give the MT-Bench questions as data.test_path"
                )
            raw = self._load(self.train_path, self.train_split, "train")
            fmt = self._format_of(raw, self.source, "train")
            n_val = _count(self.val_size, len(raw))
            val_raw = None
            if n_val:
                if n_val >= len(raw):
                    raise ValueError(f"data.val_size={self.val_size} leaves no training rows (of {len(raw)})")
                parts = raw.train_test_split(test_size=n_val, seed=self.seed, shuffle=True)
                raw, val_raw = parts["train"], parts["test"]
            self.train_set = self._encode_train(raw, fmt, "train")
            if val_raw is not None:
                if self.val_mode == "loss":
                    self.val_set = self._encode_train(val_raw, fmt, "validation")
                else:
                    self.val_set = self._encode_eval(val_raw, fmt, "validation")
        if stage in (None, "test", "predict") and self.test_set is None and self.test_path is not None:
            raw = self._load(self.test_path, self.test_split, "test")
            self._test_format = self._format_of(raw, self.test_source, "test")
            self.test_set = self._encode_eval(raw, self._test_format, "test")
        if stage in ("test", "predict") and self.test_set is None:
            raise ValueError(
                f"data.test_path is not set: {stage} needs test prompts (e.g. llama-duo/coverage_dataset "
                "with data.test_split=test_classify, or FastChat's MT-Bench question.jsonl)"
            )
        for key, value in {
            "eos_token_id": self.turn_info["stop_ids"] or None,
            "pad_token_id": self.tokenizer.pad_token_id,
        }.items():
            if value is not None:
                self.generation_kwargs.setdefault(key, value)

    def val_dataloader(self) -> Any:
        if self.val_set is None and not self.val_size:
            return []  # no validation data asked for: Lightning skips the loop
        return super().val_dataloader()

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if rows and "meta_json" in rows[0]:
            rows = [{**r, "meta": json.loads(r["meta_json"])} for r in rows]
        return super().collate(rows)

    # ------------------------------------------------------------------ metrics and predictions
    def build_metrics(self, stage: str) -> dict[str, Any]:
        if stage == "val" and self.val_mode == "loss":
            return {}
        from kasa_lightning.metrics.rouge import RougeL

        return {"rougeL": RougeL()}

    def format_prediction(self, meta: dict[str, Any], text: str) -> dict[str, Any]:
        text = self.clean_output(text)
        if "question_id" in meta and self._test_format == "mt_bench":
            return fastchat_answer(
                meta["question_id"], meta.get("category"), self.model_id, [*meta.get("previous_turns", []), text]
            )
        return {**meta, "output": text}


def _count(size: int | float, total: int) -> int:
    if size <= 0:
        return 0
    if isinstance(size, float) and size < 1:
        return max(1, round(size * total))
    return int(size)
