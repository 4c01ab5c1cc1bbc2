"""Resuming a checkpoint whose optimiser state was written with one parameter per adapter tensor.

Checkpoints written before the adapters were stacked (``kasa/bank.py``), and those of a sharding strategy, hold
the optimiser state of every dU, dV and dsigma separately: the "adapters" group lists them layer by layer, in module
order, each layer as dU, dV, dsigma (the order of its parameters). A stacked model's group lists the stacked
parameters instead. ``stack_optimizer_state`` rewrites the former into the latter: per-tensor state (AdamW's moments,
an SGD momentum buffer) is stacked in each group's member order, and per-parameter scalars (AdamW's step) must be
equal across the members, or the rewrite is refused. The model state needs no rewrite: its keys do not depend on the
layout.
"""

from __future__ import annotations

from typing import Any

import torch

from kasa_lightning.kasa import AdaptedLayer, AdapterBank


def stack_optimizer_state(state: dict[str, Any], layers: list[tuple[str, AdaptedLayer]], bank: AdapterBank) -> bool:
    """Rewrite ``state`` (an ``Optimizer.state_dict()``) in place from per-tensor to stacked adapter parameters;
    False (nothing changed) when it already is stacked or is not a per-tensor state of these layers."""
    groups = state.get("param_groups") or []
    attrs: tuple[str, ...] = ("delta_u", "delta_v", "delta_sigma")  # a layer's parameter order
    order = [(name, attr) for name, layer in layers for attr in attrs if attr in layer._slots]
    if not groups or len(groups[0]["params"]) != len(order) or len(order) == len(bank.members):
        return False
    index: dict[tuple[str, str], int] = dict(zip(order, groups[0]["params"]))
    old = state["state"]
    new: dict[int, dict[str, Any]] = {}
    for g, members in enumerate(bank.members):
        states = [old.get(index[m]) for m in members]
        if all(s is None for s in states):
            continue
        if any(s is None for s in states):
            raise ValueError(
                f"the checkpoint's optimiser state covers only some adapter tensors of stacked group {g} (e.g. "
                f"{members[0]}); it cannot be stacked. Resume without --ckpt_path, or load the weights only "
                "(KaSAModule.load_from_checkpoint)"
            )
        new[g] = {key: _stacked(key, [s[key] for s in states], members) for key in states[0]}  # type: ignore[index]
    position = len(bank.members)
    rewritten = [{**groups[0], "params": list(range(position))}]
    for group in groups[1:]:  # modules_to_save: the same tensors, renumbered after the stacked ones
        ids = []
        for old_id in group["params"]:
            if old_id in old:
                new[position] = old[old_id]
            ids.append(position)
            position += 1
        rewritten.append({**group, "params": ids})
    state["state"], state["param_groups"] = new, rewritten
    return True


def _stacked(key: str, values: list[Any], members: list[tuple[str, str]]) -> Any:
    """One stacked state entry: tensors of the member's shape stacked, per-parameter scalars kept (all equal)."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.stack(values)
    if all((torch.equal(v, first) if isinstance(v, torch.Tensor) else v == first) for v in values):
        return first
    raise ValueError(
        f"the checkpoint's optimiser state {key!r} differs between the adapter tensors of one stacked group ("
        f"{members[0][0]}.{members[0][1]} and others), so it cannot be stacked; resume without --ckpt_path, or "
        "load the weights only (KaSAModule.load_from_checkpoint)"
    )
