"""``CausalLMDataModule``: the shared base of the generation tasks (E2E NLG, Commonsense170K, instruction data).

Contract with ``KaSAModule`` (task ``"causal_lm"``):

* Training batches: ``input_ids``, ``attention_mask`` (right-padded) and ``labels`` = the input ids with -100 on
  every prompt and padding token, so that the loss covers the target tokens only.
* Evaluation batches (``eval_generate = True``): the prompts alone, LEFT-padded for ``generate``, plus two
  plain lists that the module passes through: ``targets`` (what the metrics compare with: reference lists,
  gold answers ...) and ``meta`` (ids and fields for prediction files).
* ``generation_kwargs``: ``generate`` settings of the task (the model's ``generation`` overrides them).
* ``build_metrics(stage)``: ``{name: Metric}``; each gets ``update(predicted_texts, targets)``; ``compute()``
  returns a number or a dict of numbers, logged as ``<stage>/<name>`` or ``<stage>/<key>``.
* ``format_prediction(meta, text) -> dict``: one line of the ``predict`` output file.

Over-long examples are truncated (target tokens are kept, the prompt loses its start) or dropped, as
``overlength`` says, and counted in ``self.stats``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from kasa_lightning.datamodules.base import BaseDataModule

IGNORE_INDEX = -100


class CausalLMDataModule(BaseDataModule):
    """Base for prompt -> target generation tasks; subclasses build their training rows with ``encode_pair`` and
    their evaluation rows with ``encode_prompt`` plus ``targets`` and ``meta``."""

    task = "causal_lm"
    num_labels = 0
    eval_generate = True
    ENCODING_VERSION = 1
    """Bump it in a subclass whenever that subclass's encoding changes: it is part of every ``map_fingerprint``, so
    results cached by ``datasets`` under the old encoding are not reused."""

    def __init__(
        self,
        max_length: int = 512,
        overlength: Literal["truncate", "drop"] = "truncate",
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_length=max_length, **kwargs)
        if overlength not in ("truncate", "drop"):
            raise ValueError(f"data.overlength={overlength!r}: choose 'truncate' or 'drop'")
        self.overlength = overlength
        self.generation_kwargs: dict[str, Any] = dict(generation or {})
        self.stats: dict[str, int] = {"truncated": 0, "dropped": 0}

    # ------------------------------------------------------------------ encoding
    def map_fingerprint(self, data: Any, *parts: Any) -> str:
        """The cache key of a ``datasets.Dataset.map`` that encodes ``data``: the data's own fingerprint, the class
        and its ``ENCODING_VERSION``, the tokenizer's identity, the length settings, and ``parts`` (whatever else
        the encoding depends on: split, format, budgets, templates)."""
        from datasets.fingerprint import Hasher

        tok = self.tokenizer
        tokenizer = (
            type(tok).__name__,
            tok.name_or_path,
            len(tok),
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
        return Hasher.hash(
            [
                type(self).__name__,
                self.ENCODING_VERSION,
                getattr(data, "_fingerprint", None),
                tokenizer,
                self.max_length,
                self.overlength,
                *parts,
            ]
        )

    def encode_pair(self, prompt: str, target: str) -> dict[str, list[int]] | None:
        """Token ids of prompt + target + EOS with the prompt masked in ``labels``; None if dropped."""
        tok = self.tokenizer
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(p) + len(t) > self.max_length:
            if self.overlength == "drop" or len(t) >= self.max_length:
                self.stats["dropped"] += 1
                return None
            self.stats["truncated"] += 1
            p = p[len(p) + len(t) - self.max_length :]
        return {"input_ids": p + t, "attention_mask": [1] * (len(p) + len(t)), "labels": [IGNORE_INDEX] * len(p) + t}

    def encode_prompt(self, prompt: str) -> dict[str, list[int]]:
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        budget = self.max_length - int(self.generation_kwargs.get("max_new_tokens", 0))
        if len(ids) > budget > 0:
            self.stats["truncated"] += 1
            ids = ids[len(ids) - budget :]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    # ------------------------------------------------------------------ batching
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        width = max(len(r["input_ids"]) for r in rows)
        if "labels" in rows[0]:  # training: right padding

            def right(seq: list[int], value: int) -> list[int]:
                return list(seq) + [value] * (width - len(seq))

            return {
                "input_ids": torch.tensor([right(r["input_ids"], pad) for r in rows]),
                "attention_mask": torch.tensor([right(r["attention_mask"], 0) for r in rows]),
                "labels": torch.tensor([right(r["labels"], IGNORE_INDEX) for r in rows]),
            }

        def left(seq: list[int], value: int) -> list[int]:  # generation: left padding
            return [value] * (width - len(seq)) + list(seq)

        return {
            "input_ids": torch.tensor([left(r["input_ids"], pad) for r in rows]),
            "attention_mask": torch.tensor([left(r["attention_mask"], 0) for r in rows]),
            "targets": [r["targets"] for r in rows],
            "meta": [r.get("meta", {}) for r in rows],
        }

    def build_metrics(self, stage: str) -> dict[str, Any]:
        return {}

    def format_prediction(self, meta: dict[str, Any], text: str) -> dict[str, Any]:
        return {**meta, "output": text}
