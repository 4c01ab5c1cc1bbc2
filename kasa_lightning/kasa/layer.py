"""`AdaptedLayer`: one wrapper for ``nn.Linear`` and transformers ``Conv1D`` that holds every method's update.

Notation (out = m, in = n, rank r, eta = alpha / r):

    W                      the wrapped weight as (out, in), whatever the storage (Conv1D stores (in, out))
    D = dropped_u dropped_v^T      (m, r) @ (r, n): the rank-r part removed from W
                                   (KaSA/MiLoRA: the r minor triplets; PiSSA: the r principal ones; LoRA: none)
    update = eta * delta_u diag(delta_sigma) delta_v^T      (m, r) (r) (n, r); no diag when singular_values=False

    y = x (W - D)^T + b + eta * ((dropout(x) delta_v) * delta_sigma) delta_u^T

The base weight holds W, W - D or W - D + update (``WeightState``); the moves between them are in
``weight_state.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from . import bnb
from .bank import AdapterBank, AdapterTensor, Slot
from .config import AdapterConfig
from .quant_source import QuantizedBase
from .svd import Triplets
from .terms import LayerTerms, layer_terms
from .weight_state import WeightState, WeightStates, is_conv1d


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an ``nn.Linear``, ``Conv1D`` or quantised linear layer (whose storage is
    packed: its shape is not the weight's)."""
    if bnb.is_quantized(module):
        return bnb.quantized_shape(module)
    w = cast(torch.Tensor, module.weight)
    return (w.shape[1], w.shape[0]) if is_conv1d(module) else (w.shape[0], w.shape[1])


QUANTIZED_D_DTYPE = torch.bfloat16  # the removed part's factors on a quantised base in fold mode (half of float32)


class AdaptedLayer(WeightStates, nn.Module):
    """Wraps ``base_layer`` (``nn.Linear``, ``Conv1D``, bitsandbytes ``Linear4bit``/``Linear8bitLt``) with a
    KaSA / LoRA / PiSSA / MiLoRA update.

    Trainable tensors: ``delta_u`` (out, r), ``delta_sigma`` (r,) (only with singular values) and
    ``delta_v`` (in, r): parameters of this layer, or, after ``stack_adapters`` (what ``apply_adapters`` does by
    default), views of the model's ``AdapterBank`` (see ``bank.py``); ``adapter_grad`` reads their gradients in
    both layouts. Buffers ``dropped_u`` (out, r) and ``dropped_v`` (in, r) (the default float dtype; on a
    quantised base float32, or ``QUANTIZED_D_DTYPE`` (bf16) in fold mode) hold the removed
    rank-r part (only for methods that remove one); they are saved with the adapter, which makes the truncation
    reversible and exportable. ``state`` is the base weight's ``WeightState``; ``quantized`` describes a quantised
    base (None otherwise). ``record_terms`` (independent of the weight) is the regulariser form each forward under
    grad records its L2/L3 with, for sharded training (see ``regularizers.record_in_forward``).
    """

    # for type checkers (nn.Module.__getattr__ types every attribute as Tensor | Module)
    base_layer: nn.Module
    dropped_u: torch.Tensor | None
    dropped_v: torch.Tensor | None

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, quantized: QuantizedBase | None = None) -> None:
        super().__init__()
        self._bank: AdapterBank | None = None  # set by stack_adapters (a plain attribute: the model owns the bank)
        self._slots: dict[str, Slot] = {}
        self.base_layer = base_layer
        self.r = config.r
        self.scaling = config.scaling
        self.truncation_mode = config.truncation_mode  # a setting: which state the layer rests in
        self.method = config.method
        self.quantized = quantized
        out_features, in_features = linear_shape(base_layer)
        self.out_features, self.in_features = out_features, in_features
        w = cast(torch.Tensor, base_layer.weight)
        device = w.device
        dtype = w.dtype if w.dtype.is_floating_point and quantized is None else torch.float32
        self.register_parameter(
            "delta_u", nn.Parameter(torch.zeros(out_features, config.r, device=device, dtype=dtype))
        )
        self.register_parameter("delta_v", nn.Parameter(torch.zeros(in_features, config.r, device=device, dtype=dtype)))
        sigma = nn.Parameter(torch.ones(config.r, device=device, dtype=dtype)) if config.singular_values else None
        self.register_parameter("delta_sigma", sigma)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if config.removes_triplets:
            # a quantised base: float32 in lowrank mode (the forward subtracts it, at the adapters' precision); bf16
            # in fold mode, where only the base uses it: it is quantised from W minus the stored D, so the saved D
            # describes it exactly, and bf16's 2^-9 relative rounding of D is far below the quantisation step;
            # otherwise the default dtype
            d_dtype = None
            if quantized is not None:
                d_dtype = QUANTIZED_D_DTYPE if config.truncation_mode == "fold" else torch.float32

            self.register_buffer("dropped_u", torch.zeros(out_features, config.r, device=device, dtype=d_dtype))
            self.register_buffer("dropped_v", torch.zeros(in_features, config.r, device=device, dtype=d_dtype))
        else:
            self.dropped_u = None
            self.dropped_v = None
        # D is 0 until set, so the base already holds its resting configuration (W - 0 = W)
        self.state = self._resting_state()
        self.record_terms: str | None = None
        self.recorded_terms: LayerTerms | None = None
        # FSDP: D (old factors) still folded into a base weight that loads after this layer's buffers
        self._pending_refold: tuple[torch.Tensor, torch.Tensor] | None = None
        base_layer.register_load_state_dict_post_hook(self._refold_after_base_load)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        # On a quantised base D keeps its dtype through dtype casts (``module.to(torch.float16)``, Lightning's
        # 16-true): the base holds Q(W - D) quantised from the stored D, and reloading re-quantises from the saved
        # D, so a D rounded again would no longer describe the base. Device moves apply as usual.
        kept = self.dropped_factors() if self.quantized is not None else None
        super()._apply(fn, recurse)
        if kept is not None:
            for name, old in zip(("dropped_u", "dropped_v"), kept):
                new = self._buffers[name]
                if new is not None and new.dtype != old.dtype:
                    self._buffers[name] = old.to(new.device)
        return self

    # ------------------------------------------------------------------ the adapter tensors (own or stacked)
    def _adapter_tensor(self, name: str) -> torch.Tensor | None:
        if name in self.__dict__:  # a plain tensor set over it (FSDP's views of its flat parameter): it comes first,
            return self.__dict__[name]  # as an instance attribute does on any nn.Module
        p = self._parameters.get(name)
        if p is None:
            slot = self._slots.get(name)
            if slot is not None:
                assert self._bank is not None
                return self._bank.view(slot)
            if name not in self._parameters:  # during __init__: not registered yet
                raise AttributeError(name)
        return p

    delta_u = AdapterTensor[torch.Tensor]()
    """dU (out, r): this layer's parameter, or its view of the model's stacked parameter."""
    delta_v = AdapterTensor[torch.Tensor]()
    """dV (in, r): this layer's parameter, or its view of the model's stacked parameter."""
    delta_sigma = AdapterTensor[torch.Tensor | None]()
    """dsigma (r,) (None without singular values): this layer's parameter, or a view of a stacked one."""

    def adapter_parameters(self) -> list[torch.Tensor]:
        """The trainable tensors of this layer: delta_u, delta_sigma (if any), delta_v (views of the stacked
        parameters when the model's adapters are stacked: give the optimiser ``kasa.adapter_parameters(model)``)."""
        return [p for p in (self.delta_u, self.delta_sigma, self.delta_v) if p is not None]

    def adapter_grad(self, name: str) -> torch.Tensor | None:
        """The gradient of ``name`` ("delta_u", "delta_v", "delta_sigma") after a backward pass, in either layout."""
        slot = self._slots.get(name)
        if slot is not None:
            assert self._bank is not None
            return self._bank.grad(slot)
        p = self._parameters.get(name)
        return None if p is None else p.grad

    def _attach(self, bank: AdapterBank, slots: dict[str, Slot]) -> None:
        """Read the adapter tensors from ``bank`` at ``slots`` instead of this layer's own parameters (which the
        bank has copied)."""
        for name in slots:
            self._parameters[name] = None  # the key stays: the parameter order is kept for ``_detach_from_bank``
        object.__setattr__(self, "_bank", bank)
        self._slots = dict(slots)

    def _detach_from_bank(self) -> None:
        """Own parameters again, copies of this layer's slices of the bank."""
        bank = self._bank
        if bank is None:
            return
        own = bank.own_copies(self._slots)
        object.__setattr__(self, "_bank", None)
        self._slots = {}
        self._parameters.update(own)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        if self._bank is not None:  # stacked: the slices under this layer's own keys (the format is the same)
            self._bank.save(self._slots, destination, prefix, keep_vars)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    # ------------------------------------------------------------------ initialisation
    def reset_parameters(self, config: AdapterConfig, triplets: Triplets | None) -> None:
        """Initialise the update (and, with ``triplets``, remove their part from the base weight)."""
        with torch.no_grad():
            if config.method in ("pissa", "milora"):
                assert triplets is not None
                root = (triplets.s / self.scaling).sqrt()  # (r,): eta * (u sqrt(s/eta)) (v sqrt(s/eta))^T = u s v^T
                self.delta_u.copy_(triplets.u * root)
                self.delta_v.copy_(triplets.v * root)
            else:
                if config.init_u == "zeros":
                    nn.init.zeros_(self.delta_u)
                else:
                    nn.init.normal_(self.delta_u, std=config.init_std)
                if config.init_v == "kaiming":  # as LoRA's A (r, in): fan_in = in
                    a = torch.empty(self.r, self.in_features, device=self.delta_v.device, dtype=self.delta_v.dtype)
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                    self.delta_v.copy_(a.T)
                else:
                    nn.init.normal_(self.delta_v, std=config.init_std)
                if self.delta_sigma is not None:
                    {"normal": nn.init.normal_, "zeros": nn.init.zeros_, "ones": nn.init.ones_}[config.init_sigma](
                        self.delta_sigma
                    )
        if triplets is not None:
            self.set_dropped(triplets.us, triplets.v)

    # ------------------------------------------------------------------ loading; sharded training (FSDP)
    def _load_from_state_dict(  # noqa: PLR0913
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        args = (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        # New update and removed-part tensors must keep the base weight consistent: take the old part (and a merged
        # update) out, load, put the new ones in (torch calls this before loading the children: the base layer).
        if self._weight_is_whole():
            with self.plain_weight():
                if self._bank is not None:  # stacked: this layer's slices, under its own keys
                    self._bank.load(self._slots, state_dict, prefix, strict, missing_keys, error_msgs)
                super()._load_from_state_dict(state_dict, prefix, *args)
            if self._slots:  # the base class reports the keys that are not its own parameters as unexpected
                mine = {prefix + name for name in self._slots}
                unexpected_keys[:] = [k for k in unexpected_keys if k not in mine]
            return
        # FSDP (own parameters only): the base layer is a unit of its own and whole only while it loads; correct its
        # weight then
        old = None
        if self.state is WeightState.FOLDED:
            old_u, old_v = self._required_dropped_factors()
            old = (old_u.clone(), old_v.clone())
        super()._load_from_state_dict(state_dict, prefix, *args)
        if old is not None and f"{prefix}base_layer.weight" not in state_dict:
            self._pending_refold = old

    def _refold_after_base_load(self, module: nn.Module, incompatible_keys: object) -> None:
        """Load post-hook of the base layer: W += D_old - D_new, deferred from ``_load_from_state_dict``."""
        if self._pending_refold is not None:
            old_u, old_v = self._pending_refold
            self._pending_refold = None
            with torch.no_grad():
                new_u, new_v = self._required_dropped_factors()  # set: only a folded layer defers a refold
                self._add_to_weight(old_u @ old_v.T - new_u @ new_v.T)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta_u, delta_v, delta_sigma = self.delta_u, self.delta_v, self.delta_sigma
        if self.record_terms is not None and torch.is_grad_enabled():  # sharded training: terms while whole
            self.recorded_terms = layer_terms(delta_u, delta_sigma, delta_v, self.record_terms)
        if self.state is WeightState.MERGED:
            return self.base_layer(x)
        # A plain nn.Linear without hooks run on x flattened to (tokens, in) returns a fresh, non-view (tokens, out)
        # tensor that nobody else holds: in eager mode the update can be accumulated into it in place (_add_product).
        flat_linear = type(self.base_layer) is nn.Linear and not (
            self.base_layer._forward_hooks or self.base_layer._forward_pre_hooks
        )
        lead = x.shape[:-1]
        if flat_linear and x.dim() != 2:
            x = x.reshape(-1, x.shape[-1])  # (tokens, in)
        y = self.base_layer(x)  # (tokens, out), or (..., out) for other base layers
        dropped_u, dropped_v = self.dropped_u, self.dropped_v  # (out, r), (in, r), both None or both set
        if dropped_u is not None and dropped_v is not None and self.state is WeightState.ORIGINAL:
            xd = x if x.dtype == dropped_v.dtype else x.to(dropped_v.dtype)
            y = _add_product(y, xd @ dropped_v, dropped_u, flat_linear, alpha=-1.0)
        x = self.dropout(x)
        h = (x if x.dtype == delta_v.dtype else x.to(delta_v.dtype)) @ delta_v  # (tokens, r)
        if delta_sigma is not None:  # the diagonal scales the r-wide activations, the cheapest place
            h = h * delta_sigma
        y = _add_product(y, h, delta_u, flat_linear, alpha=self.scaling)  # (tokens, out); eta rides on the GEMM
        return y.view(*lead, y.shape[-1]) if flat_linear else y

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, r={self.r}, scaling={self.scaling:g}, in={self.in_features}, "
            f"out={self.out_features}, mode={self.truncation_mode}, state={self.state.name}"
        )


def _add_product(y: torch.Tensor, h: torch.Tensor, u: torch.Tensor, in_place: bool, alpha: float = 1.0) -> torch.Tensor:
    """y + alpha * h u^T for y (..., out), h (..., r), u (out, r).

    Eager mode, with ``in_place`` (y is a plain Linear's own fresh 2-D output), y of the same dtype as h and u, and
    y not a view: the product is accumulated into y by one ``addmm_``, the GEMM adds into y directly instead of
    writing a (tokens, out) temporary that a second pass adds. A Linear's backward does not need its output, so
    changing it in place is safe (autograd's version counter would raise otherwise), and since y is not a view
    autograd records a plain AddmmBackward, not a CopySlices that clones the (tokens, out) gradient
    (``benchmarks/hot_paths.py`` times the three forms).

    Under ``torch.compile`` (``torch.compiler.is_compiling()``) the same sum is written out of place with no check
    of y's storage: ``y._is_view()`` returns a Python bool that dynamo cannot put into a graph, so it would break the
    graph at every adapted layer, and inductor fuses the add itself. Other cases (autocast, a bf16 base with float32
    adapters, a base layer with hooks, a Conv1D whose output is a view) add out of place in both modes.
    ``alpha`` rides on the GEMM (addmm's own scale), so eta costs no extra operator.
    """
    same = y.dtype == h.dtype == u.dtype
    if same and y.dim() == 2:
        if torch.compiler.is_compiling() or not in_place:
            return torch.addmm(y, h, u.T, alpha=alpha)
        if y.is_contiguous() and not y._is_view():
            return y.addmm_(h, u.T, alpha=alpha)
        return torch.addmm(y, h, u.T, alpha=alpha)
    product = (h * alpha if alpha != 1.0 else h) @ u.T  # scale the r-wide side
    return y + (product if same else product.to(y.dtype))
