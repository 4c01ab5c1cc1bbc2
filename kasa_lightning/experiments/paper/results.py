"""The paper's results (KaSA, arXiv 2412.06071, Tables 1, 2, 3, 11, 12), shipped as
``kasa_lightning/experiments/paper/paper_results.json`` and looked up by (model, task, method, metric).

* ``model``: the paper's name (``"RoBERTa-base"``, ``"GPT-2 Medium"``, ``"LLaMA3-8B"``, ...) or a backbone id a
  config uses (``"roberta-base"``, ``"microsoft/deberta-v3-base"``, ``"meta-llama/Meta-Llama-3-8B"``).
* ``task``: GLUE ``sst2``, ``mrpc``, ``cola``, ``qnli``, ``rte``, ``stsb`` (as ``GLUEDataModule.task``); ``e2e``;
  ``commonsense``; instruction following ``classification``, ``summarization``, ``coding``, ``closed_qa``,
  ``mt_bench``.
* ``method``: ``kasa``, ``lora``, ``pissa``, ``milora``, ``fft``, ``bitfit``, ``adalora``, ``dylora``, ``vera``,
  ``sara``, ``base`` (no fine-tuning), adapters with their size (``adptd_0.3m``, ``adpth_6.0m``, ...).
* ``metric``: the name the run logs, without the stage: GLUE ``accuracy``/``mcc``/``pearson``; E2E ``BLEU``,
  ``NIST``, ``METEOR``, ``ROUGE_L``, ``CIDEr``; commonsense ``accuracy_<set>`` (``accuracy_boolq``,
  ``accuracy_ARC-Challenge``, ..., ``accuracy_average``); instruction following ``judge`` (LLM-judge score 1-10).

``value`` is the number as printed; ``unit`` ``"percent"`` means the logged metric is the fraction ``value / 100``
(``PaperResult.logged_value``), ``"score"`` that it is in the metric's own unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal


@dataclass(frozen=True)
class PaperResult:
    table: int
    model: str
    task: str
    method: str
    metric: str
    value: float  # as printed in the paper
    unit: Literal["percent", "score"]
    params: str | None  # trainable parameters as printed
    protocol: str  # how the paper computed it (seeds, epoch)

    @property
    def logged_value(self) -> float:
        """The value in the unit the runs log (percent -> fraction)."""
        return self.value / 100.0 if self.unit == "percent" else self.value


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("paper_results.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def load() -> tuple[PaperResult, ...]:
    """Every shipped result."""
    return tuple(PaperResult(**row) for row in _data()["results"])


def paper_model(name: str) -> str | None:
    """The paper's model name for a paper name or a backbone id (``"roberta-base"`` -> ``"RoBERTa-base"``)."""
    for model, backbones in _data()["models"].items():
        if name == model or name in backbones:
            return model
    return None


def not_in_paper() -> list[dict[str, str]]:
    """(model, task) pairs that have a config here but no column in the paper's tables, with the reason."""
    return list(_data()["not_in_paper"])


@lru_cache(maxsize=1)
def _index() -> dict[tuple[str, str, str, str], PaperResult]:
    index: dict[tuple[str, str, str, str], PaperResult] = {}
    for r in load():
        key = (r.model, r.task, r.method, r.metric)
        if key in index:
            raise ValueError(f"paper_results.json lists {key} twice")
        index[key] = r
    return index


def lookup(model: str, task: str | None, method: str, metric: str) -> PaperResult | None:
    """The paper's result for (model or backbone id, task, method, metric), or None where the paper has none."""
    name = paper_model(model)
    if name is None or task is None:
        return None
    return _index().get((name, task, method, metric))
