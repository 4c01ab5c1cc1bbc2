"""TensorBoard "Custom Scalars" layout for ``RegularizerMonitor``'s curves: one multi-line chart per term and target
type that holds every adapted layer of that type, instead of one chart per layer in the Scalars tab (two per layer:
24 for the quickstart, hundreds for a 7B model).

Layout (the category and chart titles TensorBoard shows; each chart's tag is a regular expression that TensorBoard
matches from the start of the logged tags, so each is anchored with ``$``)::

    KaSA regulariser per layer
        L2 per layer: <type>     kasa/l2_layer/<type>/<index>   every layer of that type
        L3 per layer: <type>     kasa/l3_layer/<type>/<index>
    KaSA regulariser totals
        L2 per target type       kasa/l2/<type>                 one line per type
        L3 per target type       kasa/l3/<type>
        loss                     kasa/loss, kasa/reg_loss
"""

from __future__ import annotations

import re

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from kasa_lightning.kasa import layer_groups

PER_LAYER = "KaSA regulariser per layer"
TOTALS = "KaSA regulariser totals"


def regularizer_layout(model: torch.nn.Module) -> dict[str, dict[str, list]]:
    """The layout above for ``model``'s target types, in the form of ``SummaryWriter.add_custom_scalars``:
    ``{category: {chart title: ["Multiline", [tag regex, ...]]}}``."""
    kinds = list(layer_groups(model))
    per_layer: dict[str, list] = {}
    for term in ("l2", "l3"):
        for kind in kinds:
            per_layer[f"{term.upper()} per layer: {kind}"] = [
                "Multiline",
                [rf"kasa/{term}_layer/{re.escape(kind)}/\d+$"],
            ]
    totals: dict[str, list] = {
        f"{term.upper()} per target type": ["Multiline", [f"kasa/{term}/{re.escape(kind)}$" for kind in kinds]]
        for term in ("l2", "l3")
    }
    totals["loss"] = ["Multiline", ["kasa/loss$", "kasa/reg_loss$"]]
    return {PER_LAYER: per_layer, TOTALS: totals}


def write_layout(trainer: L.Trainer, model: torch.nn.Module) -> None:
    """Add the layout to every TensorBoard logger of ``trainer`` (call on global rank 0 only)."""
    layout = regularizer_layout(model)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # torch's SummaryWriter or tensorboardX's: both take this layout
            logger.experiment.add_custom_scalars(layout)
