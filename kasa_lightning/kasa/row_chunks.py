"""The rows of W - u v^T, a chunk at a time, computed in float32 and cast to a storage dtype.

Folding the removed part D into a bf16 weight (``weight_state``) and re-quantising a bitsandbytes base
(``bnb.requantize``) both rewrite an (out, in) weight; doing it a chunk of rows at a time keeps the float32
temporaries at the chunk's size instead of the weight's.
"""

from __future__ import annotations

from typing import Any

import torch


def row_chunks(n_rows: int, rows_per: int) -> list[slice]:
    """Slices of ``rows_per`` rows (the last one shorter) over ``n_rows`` rows."""
    return [slice(i, min(n_rows, i + rows_per)) for i in range(0, n_rows, rows_per)]


def rows_minus_product(
    weight: Any, rows: slice, minus: tuple[torch.Tensor, torch.Tensor] | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(weight - u v^T)[rows] for ``minus`` = (u (out, r), v (in, r)), computed in float32 and cast to ``dtype``: a
    contiguous (rows, in) chunk on ``device``. ``weight``: an (out, in) tensor or any row source
    (``svd.Rows``, e.g. a weight streamed from its checkpoint file); it is not changed. What folding D into a
    weight and re-quantising a base do a chunk at a time, so that no float32 copy of the whole weight is made."""
    chunk = weight[rows].to(device=device, dtype=torch.float32, copy=minus is not None)
    if minus is not None:
        u, v = minus
        chunk.addmm_(u[rows].to(chunk), v.to(chunk).T, alpha=-1.0)
    return chunk.to(dtype).contiguous()
