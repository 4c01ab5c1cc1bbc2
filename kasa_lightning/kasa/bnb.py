"""bitsandbytes base layers (``Linear4bit`` NF4/FP4, ``Linear8bitLt``): read them, rewrite them, import them quietly.

bitsandbytes is optional (``pip install -e ".[quant]"``) and imported only when a quantised layer is met or asked
for, so the method package keeps working without it. What the adapted layer needs of a quantised base:

* its true shape: ``out_features`` / ``in_features`` of the module, never the storage's shape (a ``Linear4bit``
  stores its (out, in) weight packed as (out * in / 2, 1) uint8; ``Linear8bitLt`` as int8 (out, in) plus one
  float scale per row, ``SCB``);
* ``dequantize(module)``: the (out, in) float32 weight the layer computes with;
* ``requantize(module, weight)``: quantise a new (out, in) weight into the same module, with the module's own
  settings (4-bit: quant type, block size, double quantisation, storage dtype, the dtype it was quantised from;
  8-bit: LLM.int8's row-wise absmax), as transformers' loading does, so its forward costs what it did before;
* ``snapshot_codes`` / ``restore_codes``: the quantised storage itself (integer tensors and their scales), to put
  a base back exactly.

Quiet and offline: on the CPU, importing bitsandbytes 0.50 asks the Hub for a "kernels-community" kernel (through
the ``kernels`` package) and logs a warning when that fails, and every forward of a ``Linear8bitLt`` on float32
input logs "MatMul8bitLt: inputs will be cast ... to float16" (once per layer per step). ``import_bitsandbytes()``
imports it with the Hub kernel lookup switched off (``kernels`` made unimportable for the duration of the import:
bitsandbytes then uses its own CPU kernels) and filters those two messages. Import it through this function (or
the backbone loader, which does) before transformers does.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn

#: The optional extra that installs bitsandbytes, as error messages name it.
QUANT_EXTRA = 'pip install -e ".[quant]"'

# (logger name, message start) of bitsandbytes' messages that are dropped: the failed Hub kernel lookup at import,
# and the per-layer, per-step notice that 8-bit layers cast their input to float16.
_QUIET = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast from"),
)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_bitsandbytes_logs() -> None:
    """Install the filters for bitsandbytes' repeated notices (idempotent; no import of bitsandbytes)."""
    for name, prefix in _QUIET:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


def import_bitsandbytes() -> ModuleType:
    """``import bitsandbytes`` without a Hub request and without its import-time warning.

    Raises ``ImportError`` naming the ``quant`` extra when bitsandbytes is not installed.
    """
    quiet_bitsandbytes_logs()
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is not None:
        return sys.modules["bitsandbytes"]
    # bitsandbytes' CPU backend runs `from kernels import get_kernel` (a Hub download) at import when the CPU has
    # AVX512-BF16; with `kernels` unimportable it falls back to its own kernels at once.
    missing = object()
    saved = sys.modules.get("kernels", missing)
    sys.modules["kernels"] = None  # type: ignore[assignment]  # None in sys.modules makes the import fail
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError(
            f"quantised bases need bitsandbytes, which is not installed ({err}). Install the extra: {QUANT_EXTRA}"
        ) from err
    finally:
        if saved is missing:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = saved  # type: ignore[assignment]
    return bitsandbytes


def quantized_kind(module: nn.Module) -> str | None:
    """``"4bit"`` for a bitsandbytes ``Linear4bit``, ``"8bit"`` for ``Linear8bitLt``, None for anything else.
    Imports nothing: a module of bitsandbytes' class exists only when bitsandbytes is loaded."""
    if not type(module).__module__.startswith("bitsandbytes"):
        return None
    bnb = sys.modules["bitsandbytes"]
    if isinstance(module, bnb.nn.Linear4bit):
        return "4bit"
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "8bit"
    return None


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is a bitsandbytes ``Linear4bit`` or ``Linear8bitLt``."""
    return quantized_kind(module) is not None


def quantized_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a quantised linear layer (not its packed storage's shape)."""
    return int(cast(int, module.out_features)), int(cast(int, module.in_features))


def _weight(module: nn.Module) -> Any:
    return module.weight


def _state(module: nn.Module) -> Any:
    """A Linear8bitLt's ``MatmulLtState`` (where its forward keeps the codes)."""
    return module.__dict__["state"]


def _plain_4bit(module: nn.Module) -> tuple[torch.Tensor, Any]:
    """(packed data, quant state) of a Linear4bit in bitsandbytes' standard layout (its CPU inference path may
    have repacked them in place for its bf16 kernel; this returns a converted copy, the module is not changed)."""
    bnb = sys.modules["bitsandbytes"]
    w = _weight(module)
    state = w.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        return bnb.functional._convert_weight_packed_for_cpu_inverse(w.data, state)
    return w.data, state


def _int8_codes(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(CB int8 (out, in), SCB (out,) float32) of a Linear8bitLt. Its first forward moves them from the weight
    (``Int8Params.CB``/``SCB``) to the module's ``state``; the int8 data stays in ``weight.data``."""
    w = _weight(module)
    scb = w.SCB if getattr(w, "SCB", None) is not None else _state(module).SCB
    if scb is None:
        raise ValueError(f"{type(module).__name__} has no row scales (SCB): is it quantised (moved to a device)?")
    return cast(torch.Tensor, w.data), cast(torch.Tensor, scb)


def dequantize(module: nn.Module) -> torch.Tensor:
    """The (out, in) float32 weight that a quantised layer computes with."""
    bnb = sys.modules["bitsandbytes"]
    if quantized_kind(module) == "4bit":
        data, state = _plain_4bit(module)
        return bnb.functional.dequantize_4bit(data, state).float()
    cb, scb = _int8_codes(module)
    return bnb.functional.int8_vectorwise_dequant(cb, scb).float()  # CB * SCB / 127, row-wise


def requantize(module: nn.Module, weight: torch.Tensor) -> None:
    """Quantise ``weight`` (out, in) into ``module`` with the module's own settings (in place: the same
    ``Parameter`` object gets the new codes)."""
    bnb = sys.modules["bitsandbytes"]
    w = _weight(module)
    if tuple(weight.shape) != quantized_shape(module):
        raise ValueError(f"weight {tuple(weight.shape)} does not fit a layer of (out, in) {quantized_shape(module)}")
    with torch.no_grad():
        if quantized_kind(module) == "4bit":
            _, state = _plain_4bit(module)
            codes, new_state = bnb.functional.quantize_4bit(
                weight.to(device=w.device, dtype=state.dtype).contiguous(),  # the dtype transformers quantised from
                blocksize=w.blocksize,
                compress_statistics=w.compress_statistics,
                quant_type=w.quant_type,
                quant_storage=w.quant_storage,
            )
            w.data = codes
            w.quant_state = new_state
            module.quant_state = new_state
            return
        # LLM.int8: row-wise absmax of the float16 weight, as Int8Params quantises at load
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(device=w.device, dtype=torch.float16).contiguous())
        _set_int8(module, cb, scb)


def _set_int8(module: nn.Module, cb: torch.Tensor, scb: torch.Tensor) -> None:
    w = _weight(module)
    w.data = cb
    w.CB, w.SCB = cb, scb
    state = _state(module)
    state.CB = state.SCB = None  # the next forward takes them from the weight (Linear8bitLt.init_8bit_state)
    state.subB = state.idx = None  # derived from the old codes, if a forward cached them


@dataclass
class QuantCodes:
    """The quantised storage of one layer (integer codes and their scales; no float (out, in) tensor)."""

    data: torch.Tensor
    state: Any  # Linear4bit: its QuantState; Linear8bitLt: the SCB row scales (out,)


def snapshot_codes(module: nn.Module) -> QuantCodes:
    """A copy of the layer's quantised storage (to put it back later with ``restore_codes``)."""
    if quantized_kind(module) == "4bit":
        data, state = _plain_4bit(module)
        return QuantCodes(data=data.clone(), state=state)  # a QuantState is replaced, never changed, by requantize
    cb, scb = _int8_codes(module)
    return QuantCodes(data=cb.clone(), state=scb.clone())


def dequantize_codes(module: nn.Module, codes: QuantCodes) -> torch.Tensor:
    """The (out, in) float32 weight that a ``snapshot_codes`` copy of ``module``'s storage stands for."""
    bnb = sys.modules["bitsandbytes"]
    if quantized_kind(module) == "4bit":
        return bnb.functional.dequantize_4bit(codes.data, codes.state).float()
    return bnb.functional.int8_vectorwise_dequant(codes.data, codes.state).float()


def restore_codes(module: nn.Module, codes: QuantCodes) -> None:
    """Put a ``snapshot_codes`` copy back: the layer computes exactly as it did when the copy was taken."""
    w = _weight(module)
    if quantized_kind(module) == "4bit":
        w.data = codes.data.clone()
        w.quant_state = codes.state
        module.quant_state = codes.state
        return
    _set_int8(module, codes.data.clone(), codes.state.clone())
