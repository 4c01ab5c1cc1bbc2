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

from .inject import adapted_layers, adapter_config, adapter_record, cached_adapted_layers
from .layer import AdaptedLayer
from .plan import StackingPlan, make_plan
from .terms import LayerTerms, gram_distance


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
    modules = [layer for _, layer in layers]
    first = _tensor(modules[0], "delta_u")
    # L2: every dsigma (r,) of the model in one (L, r) stack
    squares = None
    if modules[0].delta_sigma is not None:
        try:
            sigmas = torch.stack([_tensor(x, "delta_sigma") for x in modules])
        except RuntimeError:
            make_plan(layers)  # raises the clear error when the tensors are shards
            raise
        squares = (sigmas if sigmas.dtype == torch.float32 else sigmas.float()).square()  # (L, r)
        l2 = squares.sum()
    else:
        l2 = torch.zeros((), device=first.device)
    # L3: dU and dV of equal (rows, r) stacked together, one batched distance per group
    distances: list[torch.Tensor] = []
    plan = None
    if need_l3:
        record = adapter_record(model)
        plan = record.reg_plan
        for attempt in (0, 1):
            if plan is None or len(plan.slots) != len(modules):
                plan = record.reg_plan = make_plan(layers)
            try:
                distances = [
                    gram_distance(torch.stack([_tensor(modules[i], attr) for i, attr in members]), form)
                    for members in plan.groups
                ]  # (group size,) each
                break
            except RuntimeError:  # the tensors changed shape, dtype or device since the plan: make it anew
                if attempt:
                    raise
                plan = None
        devices = {d.device for d in distances}
        if len(devices) == 1:
            l3 = torch.cat(distances).sum() if len(distances) > 1 else distances[0].sum()
        else:  # a model spread over devices: add up on the first one
            l3 = torch.stack([d.sum().to(first.device) for d in distances]).sum()
    else:
        l3 = torch.zeros((), device=l2.device)
    names = [name for name, _ in layers]
    return _LazyLayerTerms(names, squares, distances, plan), l2, l3


def _tensor(layer: nn.Module, name: str) -> torch.Tensor:
    """``getattr(layer, name)`` for an adapter tensor, through the parameter dict first (``Module.__getattr__`` is a
    Python fallback, paid per tensor and per layer on every step)."""
    t = layer._parameters.get(name)
    return t if t is not None else getattr(layer, name)


class _LazyLayerTerms(Mapping):
    """name -> ``LayerTerms`` of one layer, split out of the stacked values on first use (logging, callbacks); a
    training step that never reads them dispatches no per-layer operator."""

    def __init__(
        self, names: list[str], squares: torch.Tensor | None, distances: list[torch.Tensor], plan: StackingPlan | None
    ) -> None:
        self._names = names
        self._squares, self._distances, self._plan = squares, distances, plan
        self._terms: dict[str, LayerTerms] | None = None

    def _all(self) -> dict[str, LayerTerms]:
        if self._terms is None:
            n = len(self._names)
            ref = self._squares if self._squares is not None else (self._distances[0] if self._distances else None)
            zero = torch.zeros((), device=ref.device if ref is not None else None)
            l2 = self._squares.sum(-1).unbind() if self._squares is not None else [zero] * n
            if self._plan is not None:
                parts = [d.unbind() for d in self._distances]
                l3 = [parts[gu][pu] + parts[gv][pv] for (gu, pu), (gv, pv) in self._plan.slots]
            else:
                l3 = [zero] * n
            self._terms = {name: LayerTerms(l2=a, l3=b) for name, a, b in zip(self._names, l2, l3)}
        return self._terms

    def __getitem__(self, name: str) -> LayerTerms:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._names)} layers)"
