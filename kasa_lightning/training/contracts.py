"""What a DataModule may provide to ``KaSAModule``'s evaluation, written as ``typing.Protocol`` classes.

Every part is optional: a DataModule that provides none of them gets the defaults in brackets. The shipped
DataModules (``kasa_lightning.datamodules``) implement them; a user's own DataModule implements the parts it needs,
with these names and signatures, and needs no base class. ``KaSAModule`` checks them with ``isinstance`` (the
protocols are runtime-checkable, which checks that the members exist, not their signatures).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ProvidesMetrics(Protocol):
    """The task's metrics [classification: accuracy; regression: Pearson and Spearman]."""

    def build_metrics(self, stage: str) -> dict[str, Any]:
        """Fresh metric instances (torchmetrics ``Metric``s) for ``stage`` (``"val"`` or ``"test"``), by name.
        Called once per stage and evaluation dataloader. Each metric's ``update`` receives (predictions, labels),
        or (generated texts, the batch's ``targets``) for a generating DataModule; ``compute`` returns a value or a
        dict of named values, logged as ``<stage>/<name>``."""
        ...


@runtime_checkable
class NamesEvalLoaders(Protocol):
    """Several evaluation dataloaders [one, unnamed]."""

    def eval_names(self, stage: str) -> list[str] | None:
        """Suffixes of the evaluation dataloaders of ``stage`` in order (MNLI: ``["matched", "mismatched"]``),
        appended to every logged name as ``_<suffix>``; ``None`` or ``[]`` for a single dataloader."""
        ...


@runtime_checkable
class GeneratesForEval(Protocol):
    """Causal-LM tasks scored on generated text [scored on the loss only]."""

    eval_generate: bool
    """True: evaluation batches hold left-padded prompts and ``targets``; the module generates and the metrics
    score the decoded texts."""
    generation_kwargs: dict[str, Any]
    """``generate`` settings of the task; the module's ``generation`` setting overrides them key by key."""
    tokenizer: Any
    """The tokenizer that decodes the generated ids."""


@runtime_checkable
class FormatsPredictions(Protocol):
    """The records ``predict`` returns for causal-LM tasks [``{**meta, "output": text}``]."""

    def format_prediction(self, meta: dict[str, Any], text: str) -> dict[str, Any]:
        """One prediction record from the batch's ``meta`` for an example and the generated ``text``."""
        ...


@runtime_checkable
class NamesLabels(Protocol):
    """Class names for ``predict`` [class ids: ``{"prediction": <id>}``]."""

    label_names: list[str] | None
    """The class labels in id order; classification predictions are then written as
    ``{"prediction": <label>, "label_id": <id>}``. ``None``: ids only."""
