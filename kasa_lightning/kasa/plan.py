"""How ``adapter_loss`` stacks the adapter factors of a model: factors of the same (rows, r, dtype, device) form one
group, and one batched Gram product per group gives all their L3 distances. The plan depends only on the layers'
shapes, so ``adapter_loss`` computes it once and keeps it on the model (``AdapterRecord.reg_plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .layer import AdaptedLayer


def whole(layer: AdaptedLayer) -> bool:
    """Whether this process sees the layer's adapter tensors whole (not as FSDP shards)."""
    return tuple(layer.delta_u.shape) == (layer.out_features, layer.r) and tuple(layer.delta_v.shape) == (
        layer.in_features,
        layer.r,
    )


class StackingPlan(NamedTuple):
    """How the factors of the layers stack: ``groups`` lists, per group of equal (rows, r, dtype, device), its
    members as (layer index, "delta_u" | "delta_v"); ``slots[i]`` = ((group, position) of dU, same of dV) of layer i."""

    groups: list[list[tuple[int, str]]]
    slots: list[tuple[tuple[int, int], tuple[int, int]]]


def make_plan(layers: Sequence[tuple[str, AdaptedLayer]]) -> StackingPlan:
    sharded = [name for name, layer in layers if not whole(layer)]
    if sharded:
        raise RuntimeError(
            f"adapter_loss: the adapter tensors of {sharded[:2]} are sharded (FSDP / ZeRO-3), so their L2/L3 "
            "cannot be computed from the parameters here; call kasa.record_in_forward(model) before the "
            "forward pass (KaSAModule does this under sharding strategies)"
        )
    index: dict[tuple, int] = {}
    groups: list[list[tuple[int, str]]] = []
    slots: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for i, (_, layer) in enumerate(layers):
        slot: list[tuple[int, int]] = []
        for attr in ("delta_u", "delta_v"):
            t = getattr(layer, attr)
            g = index.setdefault((tuple(t.shape), t.dtype, t.device), len(groups))
            if g == len(groups):
                groups.append([])
            slot.append((g, len(groups[g])))
            groups[g].append((i, attr))
        slots.append((slot[0], slot[1]))
    return StackingPlan(groups, slots)
