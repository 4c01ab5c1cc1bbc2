"""KaSA's auxiliary losses: L2 on the singular values and L3 on the orthogonality of dU, dV.

Per adapted layer (dU (m, r), dsigma (r,), dV (n, r)):

    L2 = ||diag(dsigma)||_F^2 = sum_i dsigma_i^2
    L3 "paper"     = ||dU^T dU - I_r||_F + ||dV^T dV - I_r||_F        (paper Eq. 11, PEFT)
    L3 "reference" = ||dV dV^T - I_n||_F + ||dU dU^T - I_m||_F        (the authors' GLUE code)

The "reference" form is computed without building the n x n / m x m Gram matrices, from the identity
||M M^T - I_n||_F^2 = ||M^T M||_F^2 - 2 tr(M^T M) + n   for M (n, r).

Across layers: ``"sum"`` gives beta * sum L2 + gamma * sum L3; ``"mean"`` divides that by the number of layers.
Everything is computed in float32 from the parameters (no forward pass needed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .inject import adapted_layers, adapter_config


class LayerTerms(NamedTuple):
    """L2 and L3 of one adapted layer (unweighted, float32 scalars)."""

    l2: torch.Tensor
    l3: torch.Tensor


class AdapterLossTerms(NamedTuple):
    """``loss`` = beta * ``l2`` + gamma * ``l3``, where ``l2``/``l3`` are summed (or averaged, by
    ``reg_reduction``) over layers; ``per_layer`` maps each layer's qualified name to its own terms."""

    loss: torch.Tensor
    l2: torch.Tensor
    l3: torch.Tensor
    per_layer: dict[str, LayerTerms]


def _gram_distance(m: torch.Tensor) -> torch.Tensor:
    """||M^T M - I_r||_F for M (..., d, r): one value per leading index."""
    gram = m.mT @ m  # (..., r, r)
    return torch.linalg.matrix_norm(gram - torch.eye(gram.shape[-1], device=m.device, dtype=m.dtype))


def _outer_gram_distance(m: torch.Tensor) -> torch.Tensor:
    """||M M^T - I_d||_F for M (..., d, r), through the r x r Gram matrix."""
    gram = m.mT @ m  # (..., r, r)
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
    sq = gram.square().sum((-2, -1)) - 2 * trace + m.shape[-2]
    return sq.clamp_min(0).sqrt()


def layer_terms(
    delta_u: torch.Tensor, delta_sigma: torch.Tensor | None, delta_v: torch.Tensor, form: str, with_l3: bool = True
) -> LayerTerms:
    """L2 and L3 of one layer from its tensors (any dtype; computed in float32). L3 is 0 if not ``with_l3``.

    Also batched: ``delta_u`` (L, m, r), ``delta_sigma`` (L, r), ``delta_v`` (L, n, r) give (L,) terms.
    """
    u, v = delta_u.float(), delta_v.float()
    zero = u.new_zeros(u.shape[:-2])
    l2 = delta_sigma.float().square().sum(-1) if delta_sigma is not None else zero
    if not with_l3:
        return LayerTerms(l2=l2, l3=zero)
    dist = _gram_distance if form == "paper" else _outer_gram_distance
    return LayerTerms(l2=l2, l3=dist(u) + dist(v))


def adapter_loss(model: nn.Module, per_layer: bool = False) -> torch.Tensor | AdapterLossTerms:
    """beta * L2 + gamma * L3 over the adapted layers of ``model``, as its ``AdapterConfig`` says.

    Returns a scalar tensor, or with ``per_layer=True`` an ``AdapterLossTerms`` that also holds the aggregated
    and the per-layer L2/L3 values (for logging). L3 is not computed when gamma is 0 and nothing asks for it.

    Layers whose tensors have the same shapes are stacked and computed together (one batched Gram product per
    group instead of a dozen small ops per layer: the regulariser is launch-bound, not flop-bound).
    """
    config = adapter_config(model)
    need_l3 = per_layer or config.gamma > 0
    groups: dict[tuple, list[tuple[str, nn.Module]]] = {}
    order: list[str] = []  # module order, whatever the grouping
    for name, layer in adapted_layers(model):
        order.append(name)
        u, v, sigma = layer.delta_u, layer.delta_v, layer.delta_sigma
        key = (tuple(u.shape), tuple(v.shape), sigma is not None, u.device, u.dtype)
        groups.setdefault(key, []).append((name, layer))
    if not groups:
        raise ValueError("the model has no adapted layers")
    terms: dict[str, LayerTerms] = {}
    l2_sums, l3_sums = [], []
    for members in groups.values():
        layers = [layer for _, layer in members]
        sigma = torch.stack([x.delta_sigma for x in layers]) if layers[0].delta_sigma is not None else None
        group = layer_terms(  # (L,) each
            torch.stack([x.delta_u for x in layers]), sigma, torch.stack([x.delta_v for x in layers]),
            config.reg_form, need_l3,
        )
        l2_sums.append(group.l2.sum())
        l3_sums.append(group.l3.sum())
        if per_layer:
            for (name, _), l2, l3 in zip(members, group.l2.unbind(), group.l3.unbind()):
                terms[name] = LayerTerms(l2=l2, l3=l3)
    count = len(order)
    l2 = torch.stack(l2_sums).sum()
    l3 = torch.stack(l3_sums).sum()
    if config.reg_reduction == "mean":
        l2, l3 = l2 / count, l3 / count
    loss = config.beta * l2 + config.gamma * l3
    if per_layer:
        return AdapterLossTerms(loss=loss, l2=l2, l3=l3, per_layer={name: terms[name] for name in order})
    return loss
