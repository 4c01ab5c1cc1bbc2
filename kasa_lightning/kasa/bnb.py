"""bitsandbytes base layers (``Linear4bit`` NF4/FP4, ``Linear8bitLt``): read them, rewrite them, import them quietly.

bitsandbytes is optional (``pip install -e ".[quant]"``) and imported only when a quantised layer is met or asked
for, so the method package keeps working without it. What the adapted layer needs of a quantised base:

* its true shape: ``out_features`` / ``in_features`` of the module, never the storage's shape (a ``Linear4bit``
  stores its (out, in) weight packed as (out * in / 2, 1) uint8; ``Linear8bitLt`` as int8 (out, in) plus one
  float scale per row, ``SCB``);
* ``dequantize(module)``: the (out, in) float32 weight the layer computes with;
* ``requantize(module, weight, minus)``: quantise a new (out, in) weight (optionally less a low-rank part) into
  the same module, with the module's own settings (4-bit: quant type, block size, double quantisation, storage
  dtype, the dtype it was quantised from; 8-bit: LLM.int8's row-wise absmax), as transformers' loading does, so
  its forward costs what it did before; in chunks of rows, with the codes of one call on the whole weight;
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
import math
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn

from .row_chunks import row_chunks, rows_minus_product
from .svd import Rows

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


#: Elements of the weight quantised at a time. bitsandbytes' CPU quantisers make several float32 temporaries of
#: their whole input (about 7 bf16 copies of it at their peak); 4-bit blocks and 8-bit rows are quantised
#: independently of each other, so chunks of rows give the codes of one call on the whole weight.
CHUNK_ELEMENTS = 1 << 17


def requantize(
    module: nn.Module, weight: torch.Tensor | Rows, minus: tuple[torch.Tensor, torch.Tensor] | None = None
) -> None:
    """Quantise ``weight`` (out, in), any float dtype, into ``module`` with the module's own settings (in place:
    the same ``Parameter`` object gets the new codes).

    ``minus``: factors (u (out, r), v (in, r)) of a part to subtract first: the module gets Q(weight - u v^T).
    Each chunk of rows is taken to float32, has its rows of u v^T subtracted there and is cast to the dtype the
    layer quantises from (4-bit: the dtype transformers quantised from; 8-bit: float16), ``CHUNK_ELEMENTS`` at a
    time: no float copy of the whole weight is made, and ``weight`` is not changed.
    """
    w = _weight(module)
    shape = quantized_shape(module)
    if tuple(weight.shape) != shape:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit a layer of (out, in) {shape}")
    with torch.no_grad():
        if quantized_kind(module) == "4bit":
            _requantize_4bit(module, weight, minus)
            return
        # LLM.int8: row-wise absmax of the float16 weight, as Int8Params quantises at load
        rows_per = max(1, CHUNK_ELEMENTS // shape[1])
        cb = scb = None
        for rows in row_chunks(shape[0], rows_per):
            chunk = rows_minus_product(weight, rows, minus, torch.float16, w.device)
            chunk_cb, chunk_scb, _ = sys.modules["bitsandbytes"].functional.int8_vectorwise_quant(chunk)
            if cb is None or scb is None:
                cb = torch.empty(shape, dtype=chunk_cb.dtype, device=w.device)
                scb = torch.empty(shape[0], dtype=chunk_scb.dtype, device=w.device)
            cb[rows], scb[rows] = chunk_cb, chunk_scb
        assert cb is not None and scb is not None
        _set_int8(module, cb, scb)


def _requantize_4bit(
    module: nn.Module, weight: torch.Tensor | Rows, minus: tuple[torch.Tensor, torch.Tensor] | None
) -> None:
    """``requantize`` of a Linear4bit: chunks of whole quantisation blocks, then the layer's QuantState (with double
    quantisation: the absmax of all blocks quantised again, around their mean, as ``quantize_4bit`` does)."""
    bnbf = sys.modules["bitsandbytes"].functional
    w = _weight(module)
    _, state = _plain_4bit(module)  # state.dtype: the dtype transformers quantised from
    out_f, in_f = quantized_shape(module)
    blocksize = int(w.blocksize)
    unit = blocksize // math.gcd(in_f, blocksize)  # rows that hold whole quantisation blocks
    rows_per = max(unit, CHUNK_ELEMENTS // in_f // unit * unit)
    numel = out_f * in_f
    packed = torch.empty((numel + 1) // 2, 1, dtype=torch.uint8, device=w.device)
    absmax = torch.empty(-(-numel // blocksize), dtype=torch.float32, device=w.device)
    for rows in row_chunks(out_f, rows_per):
        chunk = rows_minus_product(weight, rows, minus, state.dtype, w.device)
        codes, chunk_state = bnbf.quantize_4bit(
            chunk, blocksize=blocksize, compress_statistics=False, quant_type=w.quant_type, quant_storage=torch.uint8
        )
        first = rows.start * in_f  # a multiple of blocksize (and even)
        packed[first // 2 : first // 2 + codes.shape[0]] = codes
        absmax[first // blocksize : first // blocksize + chunk_state.absmax.numel()] = chunk_state.absmax
    code = bnbf.get_4bit_type(w.quant_type, device=w.device)
    common = {"shape": torch.Size((out_f, in_f)), "dtype": state.dtype, "blocksize": blocksize, "code": code}
    if w.compress_statistics:
        offset = absmax.mean()
        qabsmax, state2 = bnbf.quantize_blockwise(absmax - offset, blocksize=256)
        new_state = bnbf.QuantState(absmax=qabsmax, quant_type=w.quant_type, offset=offset, state2=state2, **common)
    else:
        new_state = bnbf.QuantState(absmax=absmax, quant_type=w.quant_type, **common)
    if w.quant_storage != torch.uint8:
        packed = packed.squeeze().view(w.quant_storage).unsqueeze(1)
    w.data = packed
    w.quant_state = new_state
    module.quant_state = new_state


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
