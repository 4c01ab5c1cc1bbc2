"""The standard metrics of text classification and regression, built by name (torchmetrics).

Used by ``GLUEDataModule`` (GLUE's metric of each task) and ``TextClassificationDataModule`` (the user's choice):

* ``accuracy`` (classification): the fraction of correct predictions;
* ``f1`` (classification): F1 of class 1 with two labels, else the unweighted mean of the per-class F1;
* ``mcc`` (classification): Matthews correlation (with more than two labels, its multi-class form);
* ``pearson``, ``spearman`` (regression): the correlations of predicted and true scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


def check_metric_names(names: Sequence[str], num_labels: int, setting: str = "data.metrics") -> list[str]:
    """``names`` as a list, after checking that each is known and fits the task (``num_labels == 1``: regression)."""
    allowed = REGRESSION_METRICS if num_labels == 1 else CLASSIFICATION_METRICS
    task = "regression (num_labels 1)" if num_labels == 1 else f"classification ({num_labels} labels)"
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"{setting}={names}: {bad or 'empty'}; for {task} choose from {list(allowed)}")
    return names


def standard_metrics(names: Sequence[str], num_labels: int) -> dict[str, Any]:
    """Fresh torchmetrics instances for ``names`` (see the table above), keyed by name."""
    import torchmetrics.classification as C
    from torchmetrics import Metric, PearsonCorrCoef, SpearmanCorrCoef

    binary = num_labels == 2
    make: dict[str, Callable[[], Metric]] = {
        "accuracy": lambda: C.MulticlassAccuracy(num_classes=num_labels, average="micro"),
        "f1": lambda: C.BinaryF1Score() if binary else C.MulticlassF1Score(num_classes=num_labels, average="macro"),
        "mcc": lambda: C.BinaryMatthewsCorrCoef() if binary else C.MulticlassMatthewsCorrCoef(num_classes=num_labels),
        "pearson": PearsonCorrCoef,
        "spearman": SpearmanCorrCoef,
    }
    return {name: make[name]() for name in check_metric_names(names, num_labels)}
