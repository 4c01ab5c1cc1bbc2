"""KaSA's auxiliary losses for ONE adapted layer (dU (m, r), dsigma (r,), dV (n, r)):

    L2 = ||diag(dsigma)||_F^2 = sum_i dsigma_i^2
    L3 "paper"     = ||dU^T dU - I_r||_F + ||dV^T dV - I_r||_F        (paper Eq. 11, PEFT)
    L3 "reference" = ||dV dV^T - I_n||_F + ||dU dU^T - I_m||_F        (the authors' GLUE code)

The "reference" form is computed without building the n x n / m x m Gram matrices, from the identity
||M M^T - I_n||_F^2 = ||M^T M||_F^2 - 2 tr(M^T M) + n   for M (n, r).
Everything is computed in float32. ``regularizers.py`` adds the terms up over a model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LayerTerms(NamedTuple):
    """L2 and L3 of one adapted layer (unweighted, float32 scalars)."""

    l2: torch.Tensor
    l3: torch.Tensor


def _gram_distance(m: torch.Tensor) -> torch.Tensor:
    """||M^T M - I_r||_F for M (..., d, r): one value per leading index."""
    r = m.shape[-1]
    eye = torch.eye(r, device=m.device, dtype=m.dtype)
    if m.dim() == 3:  # (L, d, r): one baddbmm gives M^T M - I for all L (no expand/reshape around a matmul)
        return torch.linalg.vector_norm(torch.baddbmm(eye, m.mT, m, beta=-1), dim=(-2, -1))
    return torch.linalg.matrix_norm(m.mT @ m - eye)


def _outer_gram_distance(m: torch.Tensor) -> torch.Tensor:
    """||M M^T - I_d||_F for M (..., d, r), through the r x r Gram matrix: ||M^T M||_F^2 - 2 tr(M^T M) + d."""
    gram = torch.bmm(m.mT, m) if m.dim() == 3 else m.mT @ m  # (..., r, r)
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
    sq = gram.square().sum((-2, -1)) - 2 * trace + m.shape[-2]
    return sq.clamp_min(0).sqrt()


def gram_distance(m: torch.Tensor, form: str) -> torch.Tensor:
    """The L3 distance of one factor M (d, r), or of a stack (L, d, r) -> (L,), in float32 (see the module doc)."""
    m = m if m.dtype == torch.float32 else m.float()
    return (_gram_distance if form == "paper" else _outer_gram_distance)(m)


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
