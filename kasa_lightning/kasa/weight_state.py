"""The base weight's three configurations and the moves between them: ``AdaptedLayer``'s weight bookkeeping.

(out = m, in = n; D = dropped_u dropped_v^T, (m, r) @ (r, n), the removed rank-r part; update = eta * delta_u
diag(delta_sigma) delta_v^T.) The base weight is always in one of three configurations (``WeightState``):

    ORIGINAL   W                      lowrank mode at rest (D subtracted in the forward); after ``restore_base``
    FOLDED     W - D                  fold mode at rest (a method that removes a part)
    MERGED     W - D + update         after ``merge`` (both modes)

``merge`` / ``unmerge`` / ``restore_base`` move between them; ``plain_weight()`` is the one way to change D. A float
base is rewritten in place (a float32 one by one addmm, another dtype a block of rows at a time, in float32); a
bitsandbytes base (``Linear4bit`` / ``Linear8bitLt``) holds the quantised form of the same matrices, computed from
the full-precision source each time (see ``quant_source.py``); it cannot be MERGED.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .row_chunks import row_chunks, rows_minus_product

if TYPE_CHECKING:
    from .quant_source import QuantizedBase


class WeightState(enum.Enum):
    """What the base weight holds (D: the removed rank-r part; update: eta dU diag(dsigma) dV^T)."""

    ORIGINAL = "W"
    FOLDED = "W - D"
    MERGED = "W - D + update"


def is_conv1d(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (GPT-2): weight stored (in, out), y = x W + b."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


class WeightStates:
    """The weight bookkeeping of ``AdaptedLayer`` (a mixin: it reads the layer's base, D, update and settings)."""

    base_layer: nn.Module
    quantized: QuantizedBase | None
    state: WeightState
    truncation_mode: str
    method: str
    scaling: float
    dropped_u: torch.Tensor | None
    dropped_v: torch.Tensor | None
    delta_u: torch.Tensor
    delta_v: torch.Tensor
    delta_sigma: torch.Tensor | None
    out_features: int
    in_features: int

    @property
    def merged(self) -> bool:
        """Whether the update is written into the base weight."""
        return self.state is WeightState.MERGED

    def _resting_state(self) -> WeightState:
        """FOLDED in fold mode for a method that removes a part, ORIGINAL otherwise."""
        folds = self.dropped_u is not None and self.truncation_mode == "fold"
        return WeightState.FOLDED if folds else WeightState.ORIGINAL

    def dropped_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(dropped_u (out, r), dropped_v (in, r)) in their stored dtype, or None for a method that removes nothing
        (the two buffers are registered together, or neither is)."""
        u, v = self.dropped_u, self.dropped_v
        if u is None or v is None:
            return None
        return u, v

    def _required_dropped_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``dropped_factors()`` where the method must remove a part (a clear error otherwise)."""
        factors = self.dropped_factors()
        if factors is None:
            raise ValueError(f"method {self.method!r} without truncation has no removed part")
        return factors

    def set_dropped(self, dropped_u: torch.Tensor, dropped_v: torch.Tensor) -> None:
        """Replace the removed rank-r part D = dropped_u dropped_v^T, keeping the base weight consistent."""
        if self.dropped_factors() is None:
            raise ValueError(f"method {self.method!r} without truncation has no removed part to set")
        with self.plain_weight():
            own_u, own_v = self._required_dropped_factors()
            with torch.no_grad():
                own_u.copy_(dropped_u)
                own_v.copy_(dropped_v)

    @contextmanager
    def plain_weight(self) -> Iterator[None]:
        """Work on D (or the weight) with the base holding the plain W; afterwards the layer returns to the state
        it was in, computed with the new D.

        A float base is moved to ORIGINAL and back. A quantised base is not touched on the way in (its W lives in
        the checkpoint file or the kept codes, see ``quant_source``); on the way out a FOLDED base is quantised
        again from W - D_new.
        """
        previous = self.state
        if self.quantized is None:
            self._move_to(WeightState.ORIGINAL)
            yield
            self._move_to(previous)
            return
        yield
        if previous is WeightState.FOLDED:
            self._write_quantized(previous)

    def _weight_is_whole(self) -> bool:
        """Whether this process sees the whole base weight (not an FSDP shard)."""
        if self.quantized is not None:
            return True
        return tuple(self._weight_view().shape) == (self.out_features, self.in_features)

    # ------------------------------------------------------------------ weights
    def _weight_view(self) -> torch.Tensor:
        """The base weight as an (out, in) view (in-place changes reach the stored parameter)."""
        w = cast(torch.Tensor, self.base_layer.weight).data
        return w.T if is_conv1d(self.base_layer) else w

    def _add_to_weight(self, delta: torch.Tensor) -> None:
        """W += delta (delta (out, in), computed in float32 and cast to the weight's dtype)."""
        w = self._weight_view()
        w.copy_((w.float() + delta).to(w.dtype))

    def dropped_weight(self) -> torch.Tensor | None:
        """D (out, in), float32, or None."""
        factors = self.dropped_factors()
        if factors is None:
            return None
        u, v = factors
        return u.float() @ v.float().T

    def _add_dropped(self, sign: float) -> None:
        """W += sign * D. A float32 weight is updated in place by one addmm; another dtype a block of rows at a
        time (W + D in float32, cast back), so that no (out, in) float32 temporary is made."""
        w = self._weight_view()
        u, v = self._required_dropped_factors()  # (out, r), (in, r)
        if w.dtype == torch.float32:
            w.addmm_(u, v.T, alpha=sign)
            return
        minus = (u if sign < 0 else -u, v)  # W + sign D = W - (-sign u) v^T
        for rows in row_chunks(w.shape[0], max(1, _FOLD_BLOCK // w.shape[1])):
            w[rows].copy_(rows_minus_product(w, rows, minus, w.dtype, w.device))

    def _path(self, target: WeightState) -> list[WeightState]:
        """The states from the current one to ``target``, one step each: fold mode passes through FOLDED
        (ORIGINAL <-> FOLDED <-> MERGED), lowrank mode and methods without D go ORIGINAL <-> MERGED directly."""
        line = [WeightState.ORIGINAL, WeightState.FOLDED, WeightState.MERGED]
        if self._resting_state() is WeightState.ORIGINAL:
            line.remove(WeightState.FOLDED)
        i, j = line.index(self.state), line.index(target)
        return line[i + 1 : j + 1] if j > i else line[j:i][::-1]

    def _move_to(self, target: WeightState) -> None:
        """Rewrite the base weight into ``target``'s configuration (no-op when it is there already)."""
        if self.quantized is not None:
            if target is not self.state:
                self._write_quantized(target)
            return
        with torch.no_grad():
            for nxt in self._path(target):
                pair = {self.state, nxt}
                if pair == {WeightState.ORIGINAL, WeightState.FOLDED}:  # -/+ D
                    self._add_dropped(-1.0 if nxt is WeightState.FOLDED else 1.0)
                else:  # +/- what merging adds: the update, and from ORIGINAL (lowrank) also -D
                    delta = self.delta_weight()
                    if self.state is WeightState.ORIGINAL or nxt is WeightState.ORIGINAL:
                        dropped = self.dropped_weight()
                        delta = delta - dropped if dropped is not None else delta
                    self._add_to_weight(delta if nxt is WeightState.MERGED else -delta)
                self.state = nxt

    def _write_quantized(self, target: WeightState) -> None:
        """Quantise ``target``'s configuration into a quantised base, computed from the source weight."""
        assert self.quantized is not None
        if target is WeightState.MERGED:
            raise NotImplementedError(_MERGE_REFUSAL)
        with torch.no_grad():
            if target is WeightState.ORIGINAL:
                self.quantized.restore(self.base_layer)
            else:
                # (out, in) in the checkpoint's dtype; W - D is formed in float32 chunk by chunk as it is quantised
                w = self.quantized.source_rows(self.base_layer)
                self.quantized.write(self.base_layer, w, minus=self._required_dropped_factors())
                del w
        self.state = target

    def delta_weight(self) -> torch.Tensor:
        """The learned update eta * dU diag(dsigma) dV^T as an (out, in) float32 matrix."""
        u = self.delta_u.float()
        if self.delta_sigma is not None:
            u = u * self.delta_sigma.float()
        return self.scaling * (u @ self.delta_v.float().T)

    def merge(self) -> None:
        """Write the update into the base weight (idempotent). Refused on a quantised base (see the message)."""
        if self.quantized is not None:
            raise NotImplementedError(_MERGE_REFUSAL)
        self._move_to(WeightState.MERGED)

    def unmerge(self) -> None:
        """Take the update out of the base weight again (idempotent)."""
        if self.state is WeightState.MERGED:
            self._move_to(self._resting_state())

    def restore_base(self) -> nn.Module:
        """Unmerge, put the removed part back and return the original module with its original weight."""
        self._move_to(WeightState.ORIGINAL)
        return self.base_layer


_MERGE_REFUSAL = (
    "merging into a quantised base layer is not supported: re-quantising W + update would round most of the "
    "update away (it is far below the quantisation step) and could not be undone. Keep the adapter separate, or "
    "write a full-precision merged model from the original weights (export format 'merged')."
)


#: Elements of W rewritten at a time when D is folded into a weight that is not float32 (1 MiB of float32).
_FOLD_BLOCK = 1 << 18
