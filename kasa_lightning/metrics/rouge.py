"""Reference-based ROUGE-L for instruction following (torchmetrics' ROUGE-L F-measure, no stemming, so it needs
neither NLTK nor a download), for pairs some of which have no reference (MT-Bench questions without one).

* ``RougeL``: a torchmetrics metric that ignores pairs without a reference; ``InstructionDataModule`` uses it.
* ``rouge_l_scores(predictions, references)``: the same score per pair (``None`` where a reference is missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torchmetrics.text.rouge import ROUGEScore


class RougeL(ROUGEScore):
    """ROUGE-L F-measure of generated texts against reference texts (str or list of str per prediction).

    Pairs whose reference is ``None`` (MT-Bench questions without a reference answer) are left out; ``compute``
    returns ``{"rougeL": mean F-measure}``, or ``{}`` when no pair had a reference (nothing is logged then).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rouge_keys", ("rougeL",))
        super().__init__(**kwargs)

    def update(  # type: ignore[override]
        self, preds: Sequence[str], target: Sequence[str | Sequence[str] | None]
    ) -> None:
        if isinstance(preds, str):
            preds, target = [preds], [target]  # type: ignore[list-item]
        kept = [(p, [t] if isinstance(t, str) else list(t)) for p, t in zip(preds, target) if t]
        if kept:
            super().update([p for p, _ in kept], [t for _, t in kept])

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        if len(cast(list, self.rougeL_fmeasure)) == 0:
            return {}
        return {"rougeL": super().compute()["rougeL_fmeasure"]}


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str] | None]) -> list[float | None]:
    """ROUGE-L F-measure of every (prediction, reference) pair; ``None`` where the reference is missing."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l_scores: {len(predictions)} predictions but {len(references)} references")
    from torchmetrics.functional.text.rouge import rouge_score

    out: list[float | None] = []
    for pred, ref in zip(predictions, references):
        if not ref:
            out.append(None)
            continue
        target = [ref] if isinstance(ref, str) else [list(ref)]
        out.append(float(rouge_score([pred or ""], target, rouge_keys="rougeL")["rougeL_fmeasure"]))
    return out
