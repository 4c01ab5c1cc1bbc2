"""Fused optimisers and gradient clipping under mixed precision.

A fused optimiser (``torch.optim.AdamW(fused=True)``, as every shipped config sets) unscales the gradients inside
its ``step``, so Lightning's mixed-precision plugins refuse to clip them: with ``trainer.gradient_clip_val`` set,
the first optimiser step raises "does not allow for gradient clipping". ``unfused_if_clipping`` rebuilds such an
optimiser unfused (same class, same settings, same parameter groups) before training starts, with a one-line
notice. In full precision Lightning clips a fused optimiser's gradients itself, and nothing changes.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info


def refuses_clipping(trainer: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``trainer`` would refuse to clip the gradients of ``optimizer`` (a fused optimiser under a
    mixed-precision plugin, with ``gradient_clip_val`` set)."""
    from lightning.pytorch.plugins.precision import FSDPPrecision, MixedPrecision

    clipping = bool(getattr(trainer, "gradient_clip_val", None))
    mixed = isinstance(getattr(trainer, "precision_plugin", None), (MixedPrecision, FSDPPrecision))
    return clipping and mixed and bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def unfused_if_clipping(
    trainer: Any, optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """``optimizer``, or the same optimiser built unfused over ``groups`` when ``trainer`` would refuse to clip
    its gradients (see the module docstring)."""
    if not refuses_clipping(trainer, optimizer):
        return optimizer
    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted and k != "fused"}
    rank_zero_info(
        f"{type(optimizer).__name__}(fused=True) cannot be clipped under {trainer.precision_plugin.precision} "
        f"precision: trainer.gradient_clip_val={trainer.gradient_clip_val} uses the unfused optimiser instead "
        "(set fused: false in model.optimizer to silence this)"
    )
    rebuild: Any = type(optimizer)  # a concrete optimiser class; Optimizer's own __init__ has no `fused`
    return rebuild(groups, **settings, fused=False)
