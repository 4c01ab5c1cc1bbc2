"""KaSA's regulariser over a model: beta * L2 + gamma * L3 summed (or averaged) over the adapted layers.

The per-layer terms are defined in ``terms.py``. Across layers: ``"sum"`` gives beta * sum L2 + gamma * sum L3;
``"mean"`` divides that by the number of layers. They are computed from the parameters, no forward pass needed,
except when the parameters are sharded (FSDP, DeepSpeed ZeRO-3): then only the forward pass of each layer sees its
whole tensors, so ``record_in_forward(model)`` makes every layer compute its own terms there, and ``adapter_loss``
adds up those recorded terms (their graph leads back to the unsharded tensors, so gradients flow as usual).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .inject import adapted_layers, adapter_config
from .terms import LayerTerms, layer_terms


class AdapterLossTerms(NamedTuple):
    """``loss`` = beta * ``l2`` + gamma * ``l3``, where ``l2``/``l3`` are summed (or averaged, by
    ``reg_reduction``) over layers; ``per_layer`` maps each layer's qualified name to its own terms."""

    loss: torch.Tensor
    l2: torch.Tensor
    l3: torch.Tensor
    per_layer: dict[str, LayerTerms]


def record_in_forward(model: nn.Module, enabled: bool = True) -> None:
    """Make every adapted layer compute its L2/L3 in its forward pass (under grad), for sharded training."""
    form = adapter_config(model).reg_form if enabled else None
    for _, layer in adapted_layers(model):
        layer.record_terms = form
        layer.recorded_terms = None


def _whole(layer: nn.Module) -> bool:
    """Whether this process sees the layer's adapter tensors whole (not as FSDP shards)."""
    return (tuple(layer.delta_u.shape) == (layer.out_features, layer.r)
            and tuple(layer.delta_v.shape) == (layer.in_features, layer.r))


def adapter_loss(model: nn.Module, per_layer: bool = False) -> torch.Tensor | AdapterLossTerms:
    """beta * L2 + gamma * L3 over the adapted layers of ``model``, as its ``AdapterConfig`` says.

    Returns a scalar tensor, or with ``per_layer=True`` an ``AdapterLossTerms`` that also holds the aggregated
    and the per-layer L2/L3 values (for logging). L3 is not computed when gamma is 0 and nothing asks for it.

    Layers whose tensors have the same shapes are stacked and computed together (one batched Gram product per
    group instead of a dozen small ops per layer: the regulariser is launch-bound, not flop-bound). After
    ``record_in_forward(model)`` the terms the layers recorded in the last forward pass are used instead.
    """
    config = adapter_config(model)
    layers = list(adapted_layers(model))
    if not layers:
        raise ValueError("the model has no adapted layers")
    if layers[0][1].record_terms is not None:
        terms = _recorded_terms(layers)
        count = len(terms)
        l2 = torch.stack([t.l2 for t in terms.values()]).sum()
        l3 = torch.stack([t.l3 for t in terms.values()]).sum()
    else:
        sharded = [name for name, layer in layers if not _whole(layer)]
        if sharded:
            raise RuntimeError(
                f"adapter_loss: the adapter tensors of {sharded[:2]} are sharded (FSDP / ZeRO-3), so their L2/L3 "
                "cannot be computed from the parameters here; call kasa.record_in_forward(model) before the "
                "forward pass (KaSAModule does this under sharding strategies)"
            )
        terms, l2, l3, count = _batched_terms(layers, config.reg_form, per_layer or config.gamma > 0)
    if config.reg_reduction == "mean":
        l2, l3 = l2 / count, l3 / count
    loss = config.beta * l2 + config.gamma * l3
    if per_layer:
        return AdapterLossTerms(loss=loss, l2=l2, l3=l3, per_layer=terms)
    return loss


def _recorded_terms(layers: list[tuple[str, nn.Module]]) -> dict[str, LayerTerms]:
    missing = [name for name, layer in layers if layer.recorded_terms is None]
    if missing:
        raise RuntimeError(
            f"adapter_loss: the layers record their terms in the forward pass (record_in_forward), but {missing[:2]} "
            "have not run a forward pass with gradients enabled since; run the forward first"
        )
    return {name: layer.recorded_terms for name, layer in layers}


def _batched_terms(
    layers: list[tuple[str, nn.Module]], form: str, need_l3: bool
) -> tuple[dict[str, LayerTerms], torch.Tensor, torch.Tensor, int]:
    """Per-layer terms (module order), summed L2 and L3, and the layer count; equal shapes computed together."""
    groups: dict[tuple, list[tuple[str, nn.Module]]] = {}
    for name, layer in layers:
        u, v, sigma = layer.delta_u, layer.delta_v, layer.delta_sigma
        groups.setdefault((tuple(u.shape), tuple(v.shape), sigma is not None, u.device, u.dtype), []).append(
            (name, layer))
    terms: dict[str, LayerTerms] = {}
    l2_sums, l3_sums = [], []
    for members in groups.values():
        group_layers = [layer for _, layer in members]
        sigma = (torch.stack([x.delta_sigma for x in group_layers])
                 if group_layers[0].delta_sigma is not None else None)
        group = layer_terms(  # (L,) each
            torch.stack([x.delta_u for x in group_layers]), sigma, torch.stack([x.delta_v for x in group_layers]),
            form, need_l3,
        )
        l2_sums.append(group.l2.sum())
        l3_sums.append(group.l3.sum())
        for (name, _), l2, l3 in zip(members, group.l2.unbind(), group.l3.unbind()):
            terms[name] = LayerTerms(l2=l2, l3=l3)
    ordered = {name: terms[name] for name, _ in layers}
    return ordered, torch.stack(l2_sums).sum(), torch.stack(l3_sums).sum(), len(layers)
