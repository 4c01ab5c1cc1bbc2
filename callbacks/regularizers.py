"""``RegularizerMonitor``: KaSA's L2 and L3 per adapted layer and per target type, as TensorBoard scalars.

Computed from the adapter parameters with ``kasa_lightning.kasa.adapter_loss(per_layer=True)`` (no extra forward
pass; under FSDP, where the parameters are shards, the terms the step's forward recorded), every ``every_n_steps``
optimiser steps, next to the total training loss of that step:

    kasa/loss                    total training loss of the step (task + regulariser)
    kasa/reg_loss                beta * L2 + gamma * L3 (as configured: sum or mean over layers)
    kasa/l2/<type>, kasa/l3/<type>          summed over the layers of one target type (query, value, ...)
    kasa/l2_layer/<type>/<index>, kasa/l3_layer/<type>/<index>     one adapted layer (index = depth order)

At the start of fit it also writes a TensorBoard "Custom Scalars" layout (``callbacks/scalar_layout.py``): one
multi-line chart per term and target type holding every layer, and the per-type totals.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from kasa_lightning.callbacks.scalar_layout import write_layout
from kasa_lightning.kasa import adapter_loss, layer_groups


def regularizer_scalars(model: torch.nn.Module) -> dict[str, float]:
    """The scalars above (without ``kasa/loss``) for an adapted model."""
    with torch.no_grad():
        terms = adapter_loss(model, per_layer=True)
    out = {"kasa/reg_loss": float(terms.loss.detach())}  # (under FSDP: the step's recorded terms, with a graph)
    for kind, layers in layer_groups(model).items():
        l2 = l3 = 0.0
        for index, (name, _) in enumerate(layers):
            t = terms.per_layer[name]
            l2_i, l3_i = float(t.l2.detach()), float(t.l3.detach())
            out[f"kasa/l2_layer/{kind}/{index:02d}"] = l2_i
            out[f"kasa/l3_layer/{kind}/{index:02d}"] = l3_i
            l2, l3 = l2 + l2_i, l3 + l3_i
        out[f"kasa/l2/{kind}"], out[f"kasa/l3/{kind}"] = l2, l3
    return out


class RegularizerMonitor(L.Callback):
    """Logs L2/L3 curves per layer and per target type every ``every_n_steps`` optimiser steps."""

    def __init__(self, every_n_steps: int = 10) -> None:
        if every_n_steps < 1:
            raise ValueError(f"RegularizerMonitor.every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            model = pl_module.model
            assert isinstance(model, torch.nn.Module)
            write_layout(trainer, model)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps != 0 or not trainer.loggers:
            return  # several micro-batches of one accumulated step report once
        self._last_step = step
        scalars = regularizer_scalars(getattr(pl_module, "model"))  # noqa: B009  (a KaSAModule's adapted model)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            scalars["kasa/loss"] = float(loss)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
