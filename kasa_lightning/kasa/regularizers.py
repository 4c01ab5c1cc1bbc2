"""KaSA's regulariser over a model: beta * L2 + gamma * L3 summed (or averaged) over the adapted layers.

The per-layer terms are defined in ``terms.py``. Across layers: ``"sum"`` gives beta * sum L2 + gamma * sum L3;
``"mean"`` divides that by the number of layers. They are computed from the parameters, no forward pass needed,
except when the parameters are sharded (FSDP, DeepSpeed ZeRO-3): then only the forward pass of each layer sees its
whole tensors, so ``record_in_forward(model)`` makes every layer compute its own terms there, and ``adapter_loss``
adds up those recorded terms (their graph leads back to the unsharded tensors, so gradients flow as usual).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, NamedTuple, cast, overload

import torch
from torch import nn

from .bank import Slot, bank_of
from .inject import adapted_layers, adapter_config, adapter_record, cached_adapted_layers
from .layer import AdaptedLayer
from .orthogonality import orthogonality_distances
from .plan import make_plan
from .terms import LayerTerms


class AdapterLossTerms(NamedTuple):
    """``loss`` = beta * ``l2`` + gamma * ``l3``, where ``l2``/``l3`` are summed (or averaged, by
    ``reg_reduction``) over layers; ``per_layer`` maps each layer's qualified name to its own terms (a read-only
    mapping in module order, computed from the stacked values when first read)."""

    loss: torch.Tensor
    l2: torch.Tensor
    l3: torch.Tensor
    per_layer: Mapping[str, LayerTerms]


def record_in_forward(model: nn.Module, enabled: bool = True) -> None:
    """Make every adapted layer compute its L2/L3 in its forward pass (under grad), for sharded training."""
    form = adapter_config(model).reg_form if enabled else None
    for _, layer in adapted_layers(model):
        layer.record_terms = form
        layer.recorded_terms = None


@overload
def adapter_loss(model: nn.Module, per_layer: Literal[False] = False) -> torch.Tensor: ...


@overload
def adapter_loss(model: nn.Module, per_layer: Literal[True]) -> AdapterLossTerms: ...


@overload
def adapter_loss(model: nn.Module, per_layer: bool) -> torch.Tensor | AdapterLossTerms: ...


def adapter_loss(model: nn.Module, per_layer: bool = False) -> torch.Tensor | AdapterLossTerms:
    """beta * L2 + gamma * L3 over the adapted layers of ``model``, as its ``AdapterConfig`` says.

    Returns a scalar tensor, or with ``per_layer=True`` an ``AdapterLossTerms`` that also holds the aggregated
    and the per-layer L2/L3 values (for logging). L3 is not computed when gamma is 0 and nothing asks for it.

    The cost does not grow with depth in operators: the adapted layers are found once (``cached_adapted_layers``);
    every factor dU (m, r) and dV (n, r) with the same (rows, r) is stacked with the others (dU and dV together) and
    one batched Gram product per group gives their distances; all dsigma (r,) form one stack for L2. So a model
    dispatches the same few dozen operators whatever its number of layers (``tests/test_compile.py`` counts them).
    The per-layer values are split out of the stacks only when ``per_layer`` terms are read. After
    ``record_in_forward(model)`` the terms the layers recorded in the last forward pass are used instead.
    """
    config = adapter_config(model)
    beta, gamma = cast(float, config.beta), cast(float, config.gamma)  # AdapterConfig resolves None to floats
    layers = cached_adapted_layers(model)
    if not layers:
        raise ValueError("the model has no adapted layers")
    if layers[0][1].record_terms is not None:
        terms: Mapping[str, LayerTerms] = _recorded_terms(layers)
        count = len(terms)
        l2 = torch.stack([t.l2 for t in terms.values()]).sum()
        l3 = torch.stack([t.l3 for t in terms.values()]).sum()
    else:
        terms, l2, l3 = _batched_terms(model, layers, config.reg_form, per_layer or gamma > 0)
        count = len(layers)
    if config.reg_reduction == "mean":
        l2, l3 = l2 / count, l3 / count
    loss = beta * l2 + gamma * l3
    if per_layer:
        return AdapterLossTerms(loss=loss, l2=l2, l3=l3, per_layer=terms)
    return loss


def _recorded_terms(layers: Sequence[tuple[str, AdaptedLayer]]) -> dict[str, LayerTerms]:
    terms: dict[str, LayerTerms] = {}
    missing: list[str] = []
    for name, layer in layers:
        recorded = layer.recorded_terms
        if recorded is None:
            missing.append(name)
        else:
            terms[name] = recorded
    if missing:
        raise RuntimeError(
            f"adapter_loss: the layers record their terms in the forward pass (record_in_forward), but {missing[:2]} "
            "have not run a forward pass with gradients enabled since; run the forward first"
        )
    return terms


def _batched_terms(
    model: nn.Module, layers: Sequence[tuple[str, AdaptedLayer]], form: str, need_l3: bool
) -> tuple[Mapping[str, LayerTerms], torch.Tensor, torch.Tensor]:
    """Per-layer terms (a lazy mapping, module order), summed L2 and summed L3."""
    bank = bank_of(layers)
    if bank is not None:  # the stacked parameters are the groups: no stack, no per-layer operator
        groups: dict[int, torch.Tensor] = {g: bank.group(g) for g in range(len(bank.members))}
        slots = [layer._slots for _, layer in layers]
        sigma = [g for g, members in enumerate(bank.members) if members[0][1] == "delta_sigma"]
        factor = [g for g in groups if g not in sigma] if need_l3 else []
    else:
        groups, slots, sigma, factor = _stacked_copies(model, layers, need_l3)
    first = groups[factor[0] if factor else next(iter(groups))] if groups else _tensor(layers[0][1], "delta_u")
    # L2: the squares of every dsigma, (L_g, r) per group
    squares = {g: (groups[g] if groups[g].dtype == torch.float32 else groups[g].float()).square() for g in sigma}
    l2 = _total([x.sum() for x in squares.values()], first.device)
    # L3: the distances of every dU and dV, computed per group of equal (rows, r) and concatenated per device
    by_device: dict[torch.device, list[int]] = {}
    for g in factor:
        by_device.setdefault(groups[g].device, []).append(g)
    parts = [(gs, orthogonality_distances([groups[g] for g in gs], form)) for gs in by_device.values()]
    l3 = _total([d.sum() for _, d in parts], first.device) if need_l3 else torch.zeros((), device=l2.device)
    names = [name for name, _ in layers]
    sizes = {g: t.shape[0] for g, t in groups.items()}
    return _LazyLayerTerms(names, slots, squares, parts, sizes), l2, l3


def _total(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The sum of scalar ``parts`` (on the first one's device when the model is spread over several)."""
    if not parts:
        return torch.zeros((), device=device)
    total = parts[0]
    for p in parts[1:]:  # a Python sum: no stack (whose backward would select per part)
        total = total + p.to(total.device)
    return total


def _stacked_copies(
    model: nn.Module, layers: Sequence[tuple[str, AdaptedLayer]], need_l3: bool
) -> tuple[dict[int, torch.Tensor], list[dict[str, Slot]], list[int], list[int]]:
    """Layers with their own parameters (``stacked=False``): the groups as stacks of them (their backward unbinds
    per layer), in the same form as a bank's: groups, each layer's slots, the dsigma groups, the factor groups."""
    modules = [layer for _, layer in layers]
    groups: dict[int, torch.Tensor] = {}
    slots: list[dict[str, Slot]] = [{} for _ in modules]
    sigma: list[int] = []
    if modules[0].delta_sigma is not None:
        try:
            groups[0] = torch.stack([_tensor(x, "delta_sigma") for x in modules])  # (L, r)
        except RuntimeError:
            make_plan(layers)  # raises the clear error when the tensors are shards
            raise
        sigma.append(0)
        for i, s in enumerate(slots):
            s["delta_sigma"] = Slot(0, i)
    factor: list[int] = []
    if need_l3:
        record = adapter_record(model)
        plan = record.reg_plan
        for attempt in (0, 1):
            if plan is None or len(plan.slots) != len(modules):
                plan = record.reg_plan = make_plan(layers)
            try:
                stacks = [torch.stack([_tensor(modules[i], attr) for i, attr in members]) for members in plan.groups]
                break
            except RuntimeError:  # the tensors changed shape, dtype or device since the plan: make it anew
                if attempt:
                    raise
                plan = None
        assert plan is not None
        offset = len(groups)
        for g, stack in enumerate(stacks):
            groups[offset + g] = stack
            factor.append(offset + g)
        for i, ((gu, pu), (gv, pv)) in enumerate(plan.slots):
            slots[i]["delta_u"] = Slot(offset + gu, pu)
            slots[i]["delta_v"] = Slot(offset + gv, pv)
    return groups, slots, sigma, factor


def _tensor(layer: nn.Module, name: str) -> torch.Tensor:
    """``getattr(layer, name)`` for an adapter tensor, through the parameter dict first (``Module.__getattr__`` is a
    Python fallback, paid per tensor and per layer on every step)."""
    t = layer._parameters.get(name)
    return t if t is not None else getattr(layer, name)


class _LazyLayerTerms(Mapping):
    """name -> ``LayerTerms`` of one layer, split out of the group values on first use (logging, callbacks); a
    training step that never reads them dispatches no per-layer operator."""

    def __init__(
        self,
        names: list[str],
        slots: list[dict[str, Slot]],
        squares: dict[int, torch.Tensor],
        distances: list[tuple[list[int], torch.Tensor]],
        group_sizes: dict[int, int],
    ) -> None:
        self._group_sizes = group_sizes
        self._names, self._slots = names, slots
        self._squares, self._distances = squares, distances  # distances: (groups, their concatenated L3)
        self._terms: dict[str, LayerTerms] | None = None

    def _all(self) -> dict[str, LayerTerms]:
        if self._terms is None:
            ref = next(iter(self._squares.values()), None)
            ref = ref if ref is not None else next((d for _, d in self._distances), None)
            zero = torch.zeros((), device=ref.device if ref is not None else None)
            l2 = {g: x.sum(-1).unbind() for g, x in self._squares.items()}
            l3: dict[int, tuple[torch.Tensor, ...]] = {}
            for gs, d in self._distances:
                sizes = [self._group_sizes[g] for g in gs]
                l3.update({g: part.unbind() for g, part in zip(gs, d.split(sizes))})
            terms = {}
            for name, slot in zip(self._names, self._slots):
                s, u, v = slot.get("delta_sigma"), slot.get("delta_u"), slot.get("delta_v")
                a = l2[s.group][s.position] if s is not None and s.group in l2 else zero
                b = l3[u.group][u.position] + l3[v.group][v.position] if u is not None and u.group in l3 and v else zero
                terms[name] = LayerTerms(l2=a, l3=b)
            self._terms = terms
        return self._terms

    def __getitem__(self, name: str) -> LayerTerms:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._names)} layers)"
