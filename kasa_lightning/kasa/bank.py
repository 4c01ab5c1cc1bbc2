"""`AdapterBank`: a model's adapter tensors stored as a few stacked parameters, one per shape group.

Every trainable adapter tensor (dU (m, r), dV (n, r), dsigma (r,)) is one slice of a parameter that holds all
tensors of the same kind, shape, dtype and device: factors (dU and dV together) as (L, rows, r), singular values
as (L, r). A training step then pays its per-parameter costs once per group instead of once per layer:

* the optimiser (AdamW with ``foreach``) updates a few large tensors;
* each parameter gets one AccumulateGrad, and the regulariser reads the groups as they are (no stack, whose
  backward would unbind per layer), so a tensor used both in a layer's forward and in the regulariser costs one
  gradient addition per group, not per layer.

A layer reads its slice through ``AdaptedLayer.delta_u`` / ``delta_v`` / ``delta_sigma``: ``view`` unbinds the
group once (one operator; its backward stacks the layers' gradients back in one operator) and keeps the views
until the parameter changes, which its version counter, storage and the grad mode tell (an optimiser step, a
load, a move or cast). The model's state dict is unchanged: each layer saves and loads its own slices under its
own keys (``layer.py``), the bank saves nothing.

``stack_adapters`` / ``unstack_adapters`` (``inject.py``) move a model between this layout and one parameter per
tensor, which sharded training (FSDP, DeepSpeed ZeRO-3) needs: it shards and gathers parameters per wrapped unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar, cast

import torch
from torch import nn

# The layers are ``AdaptedLayer``s (layer.py, which reads its tensors from here: typed loosely to keep the two
# modules free of an import cycle).
Layers = Sequence[tuple[str, Any]]

ADAPTER_TENSORS = ("delta_u", "delta_v", "delta_sigma")


class Slot(NamedTuple):
    """Where one adapter tensor lives: group ``group`` (the bank's parameter ``g{group}``), at ``position``."""

    group: int
    position: int


T = TypeVar("T")


class AdapterTensor(Generic[T]):
    """An adapter tensor attribute of ``AdaptedLayer`` (``delta_u``, ``delta_v``, ``delta_sigma``): the layer's own
    parameter, or its slice of the model's ``AdapterBank`` (``AdaptedLayer._adapter_tensor`` resolves it).
    Parameters are registered as ``nn.Module`` does; a plain tensor assigned (FSDP with ``use_orig_params`` swaps its
    views of the flat parameter in and out this way) is an instance attribute, read before the parameter and removed
    by ``nn.Module`` when a parameter is set, as on any module."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, layer: Any, owner: type | None = None) -> T:
        return cast(T, layer._adapter_tensor(self.name))

    def __set__(self, layer: Any, value: T) -> None:
        layer.__dict__[self.name] = value

    def __delete__(self, layer: Any) -> None:
        if self.name not in layer.__dict__:
            raise AttributeError(self.name)
        del layer.__dict__[self.name]


class AdapterBank(nn.Module):
    """The stacked adapter parameters ``g0``, ``g1``, ... of a model; ``members[g]`` lists (layer name, tensor
    name) of group g in stacking order (module order, dU before dV within a layer)."""

    def __init__(self, layers: Layers) -> None:
        super().__init__()
        keys: dict[tuple, int] = {}
        specs: list[tuple[tuple[int, ...], torch.dtype, torch.device, bool]] = []  # per group: member shape, ...
        self.members: list[list[tuple[str, str]]] = []
        slots: list[dict[str, Slot]] = []
        for name, layer in layers:
            slots.append({})
            for attr in ADAPTER_TENSORS:
                t = layer._parameters.get(attr)
                if t is None:
                    continue
                kind = "sigma" if attr == "delta_sigma" else "factor"
                g = keys.setdefault((kind, tuple(t.shape), t.dtype, t.device), len(specs))
                if g == len(specs):
                    specs.append((tuple(t.shape), t.dtype, t.device, False))
                    self.members.append([])
                if t.requires_grad:
                    specs[g] = (*specs[g][:3], True)
                slots[-1][attr] = Slot(g, len(self.members[g]))
                self.members[g].append((name, attr))
        for g, (shape, dtype, device, trainable) in enumerate(specs):  # filled by ``stack``, tensor by tensor
            data = torch.empty((len(self.members[g]), *shape), dtype=dtype, device=device)
            self.register_parameter(f"g{g}", nn.Parameter(data, requires_grad=trainable))
        self._slots = slots
        self._views: list[tuple[torch.Tensor, ...] | None]
        self._keys: list[tuple | None]
        self._forget_views()

    def slots(self, position: int) -> dict[str, Slot]:
        """The slots of the ``position``-th layer the bank was built from."""
        return self._slots[position]

    def group(self, g: int) -> nn.Parameter:
        """The stacked parameter of group ``g``: (L, rows, r) for factors, (L, r) for singular values."""
        return self._parameters[f"g{g}"]  # type: ignore[return-value]

    def groups(self) -> list[nn.Parameter]:
        return [self.group(g) for g in range(len(self.members))]

    def view(self, slot: Slot) -> torch.Tensor:
        """The tensor at ``slot``: a view of its group, part of the autograd graph of the group parameter."""
        p = self.group(slot.group)
        if torch.compiler.is_compiling():  # one select per layer in the graph; the compiler fuses it
            return p[slot.position]
        key = (p.data_ptr(), p._version, p.requires_grad, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        views = self._views[slot.group]
        if views is None or self._keys[slot.group] != key:
            views = self._views[slot.group] = p.unbind(0)
            self._keys[slot.group] = key
        return views[slot.position]

    def write(self, slot: Slot, value: torch.Tensor) -> None:
        """Copy ``value`` into the tensor at ``slot`` (bumps the group's version: later reads see new views)."""
        with torch.no_grad():
            self.group(slot.group).detach()[slot.position].copy_(value)

    def own_copies(self, slots: dict[str, Slot]) -> dict[str, nn.Parameter]:
        """name -> a parameter of its own holding a copy of the tensor at each slot (``unstack``)."""
        return {
            name: nn.Parameter(self.view(slot).detach().clone(), requires_grad=self.group(slot.group).requires_grad)
            for name, slot in slots.items()
        }

    def save(self, slots: dict[str, Slot], destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """A layer's ``_save_to_state_dict`` part: its slices under its own keys, as if they were its parameters;
        copies, so that no two saved tensors share storage (safetensors refuses that)."""
        for name, slot in slots.items():
            t = self.view(slot)
            destination[prefix + name] = t if keep_vars else t.detach().clone()

    def load(  # noqa: PLR0913
        self,
        slots: dict[str, Slot],
        state_dict: Mapping[str, Any],
        prefix: str,
        strict: bool,
        missing_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """A layer's ``_load_from_state_dict`` part: its slices from its own keys, with torch's messages."""
        for name, slot in slots.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value = state_dict[key]
            shape = tuple(self.group(slot.group).shape[1:])
            if tuple(value.shape) != shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from checkpoint, "
                    f"the shape in current model is {shape}."
                )
                continue
            self.write(slot, value)

    def grad(self, slot: Slot) -> torch.Tensor | None:
        """The gradient of the tensor at ``slot`` (a view of its group's gradient), or None."""
        g = self.group(slot.group).grad
        return None if g is None else g[slot.position]

    def _forget_views(self) -> None:
        self._views = [None] * len(self.members)
        self._keys = [None] * len(self.members)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        self._forget_views()  # a move or cast gives new storage: do not keep the old one alive through its views
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        # copy.deepcopy and pickle: the views are graph outputs (not copyable) and a cache; they are made again
        state = self.__dict__.copy()
        state["_views"] = [None] * len(self.members)
        state["_keys"] = [None] * len(self.members)
        return state

    # the layers save and load their own slices under their own keys: the stacked parameters are not in the state dict
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        pass

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        pass

    def extra_repr(self) -> str:
        shapes = ", ".join(f"g{g}: {tuple(self.group(g).shape)}" for g in range(len(self.members)))
        return f"{shapes}"


BANK_NAME = "adapter_bank"  # the bank's attribute on the model given to ``apply_adapters``


def stack(model: nn.Module, layers: Layers) -> AdapterBank:
    """Move the adapter tensors of ``layers`` (each holding its own parameters) into a new bank on ``model``."""
    bank = AdapterBank(layers)
    for i, (_, layer) in enumerate(layers):  # copy each layer's tensors in, then let the layer drop them: at most
        slots = bank.slots(i)  # one layer's tensors exist twice at a time
        for attr, slot in slots.items():
            bank.write(slot, layer._parameters[attr])
        layer._attach(bank, slots)
    model.add_module(BANK_NAME, bank)
    return bank


def unstack(model: nn.Module, layers: Layers) -> None:
    """Give every layer its own parameters again (copies of its slices) and remove the bank from ``model``."""
    for _, layer in layers:
        layer._detach_from_bank()
    if isinstance(getattr(model, BANK_NAME, None), AdapterBank):
        delattr(model, BANK_NAME)


def bank_of(layers: Layers) -> AdapterBank | None:
    """The bank the layers read from, or None when they hold their own parameters."""
    return layers[0][1]._bank if layers else None
