"""L3 of many adapter factors at once, with its gradient written out.

For one factor M (d, r) with Gram matrix G = M^T M (r, r), both forms of ``terms.py`` are

    L3(M) = sqrt(||G - I_r||_F^2 + c)      c = 0 ("paper") or c = d - r ("reference": ||M M^T - I_d||_F^2
                                            = ||G - I_r||_F^2 + d - r, without the d x d matrix)
    dL3/dM = 2 M (G - I_r) / L3             (G symmetric; taken as 0 where L3 = 0)

``orthogonality_distances`` evaluates it for stacks of factors (L_g, d_g, r), one per shape group, and returns the
(sum L_g,) distances. Autograd would give the same gradient, but through a transpose, a batched matmul, the norm's
backward chain and a gradient addition for each of M^T and M, per group; written out it is one scale and one
batched matmul per group, which keeps the regulariser's cost per training step to a few dozen operators
(``tests/test_compile.py`` counts them). Computed in float32; ``tests/kasa/test_orthogonality.py`` checks value and
gradient against autograd on the formulas of ``terms.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class _Distances(torch.autograd.Function):
    @staticmethod
    def forward(ctx, offsets: Sequence[float], *stacks: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        centred, dists = [], []
        with torch.autocast(stacks[0].device.type, enabled=False):  # float32 also under autocast (bf16-mixed)
            for m, c in zip(stacks, offsets):
                m = m if m.dtype == torch.float32 else m.float()  # (L, d, r)
                eye = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
                g = torch.baddbmm(eye, m.mT, m, beta=-1)  # (L, r, r) = G - I
                dist = torch.linalg.vector_norm(g, dim=(-2, -1))  # (L,)
                centred.append(g)
                dists.append(dist if c == 0 else torch.hypot(dist, dist.new_tensor(c**0.5)))
            out = torch.cat(dists) if len(dists) > 1 else dists[0]  # (sum L,)
            inverse = torch.where(out > 0, 2 / out, 0.0)  # 2 / L3, 0 where L3 = 0
        ctx.save_for_backward(inverse, *stacks, *centred)
        ctx.sizes = [m.shape[0] for m in stacks]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        inverse, *saved = ctx.saved_tensors
        n = len(ctx.sizes)
        stacks, centred = saved[:n], saved[n:]
        scales = (grad.float() * inverse).split(ctx.sizes)  # (L_g,) each
        grads = []
        for m, g, scale in zip(stacks, centred, scales):
            dm = torch.bmm(m if m.dtype == torch.float32 else m.float(), g * scale.view(-1, 1, 1))  # (L, d, r)
            grads.append(dm if dm.dtype == m.dtype else dm.to(m.dtype))
        return (None, *grads)


def orthogonality_distances(stacks: Sequence[torch.Tensor], form: str) -> torch.Tensor:
    """L3 of every factor of ``stacks`` (each (L_g, d_g, r), on one device), concatenated in order: (sum L_g,)."""
    offsets = [0.0 if form == "paper" else float(m.shape[-2] - m.shape[-1]) for m in stacks]
    return _Distances.apply(offsets, *stacks)
