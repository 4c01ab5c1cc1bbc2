"""Which weight of a quantised base is decomposed, and how the base is rewritten and put back.

A quantised layer stores Q(W), not W. The singular triplets KaSA drops (or PiSSA/MiLoRA start from) should be those
of W: the r smallest singular values of Q(W) are dominated by the quantisation error Q(W) - W (its spectrum is
flat, about as large as W's small singular values), so decomposing Q(W) would remove mostly noise.
``AdapterConfig.quantized_source`` names the source:

* ``"original"`` (default): W itself, read tensor by tensor from the model's safetensors checkpoint
  (``model.name_or_path``: a local folder, or a Hub name already in the local cache), one layer at a time in its
  stored dtype, so the set-up holds the quantised model plus one layer as stored and the truncation's working set
  (``svd``: W's float64 Gram matrix and blocks of rows);
* ``"dequantized"``: deq(Q(W)), for a model whose checkpoint files are gone or not safetensors.

What the base then holds (D = the removed rank-r part, float32 factors kept on the adapted layer):

* ``fold``: Q(W_src - D), quantised with the layer's own settings: the forward costs nothing extra;
* ``lowrank``: the base stays Q(W) as loaded (shareable between task adapters); D is subtracted in the forward.

Putting the base back (``unload_adapters``) needs Q(W) exactly: with ``"original"`` W is read again and quantised
as at load (bitsandbytes quantisation is deterministic); with ``"dequantized"`` the folded layer keeps a copy of
the original integer codes (Q(W) cannot be recovered from Q(W - D)).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from . import bnb
from .svd import Rows

QuantizedSource = Literal["original", "dequantized"]
_SETTING = "AdapterConfig.quantized_source (model.adapter.quantized_source)"


class QuantizedBase:
    """The quantised base of one adapted layer: where W comes from and how the base is rewritten.

    ``file``/``key``: the safetensors file and tensor name of W (``"original"``); ``codes``: the original
    quantised storage, kept only where nothing else can restore it (``"dequantized"`` with a folded base).
    """

    def __init__(self, module: nn.Module, source: QuantizedSource, file: Path | None, key: str | None) -> None:
        self.kind = bnb.quantized_kind(module)
        self.source = source
        self.file, self.key = file, key
        self.codes: bnb.QuantCodes | None = None

    def source_rows(self, module: nn.Module) -> SourceRows | torch.Tensor:
        """W_src (out, in) for the truncation and the re-quantisation, which read it a block of rows at a time:
        ``"original"`` streams it from the checkpoint file (``SourceRows``: no whole copy is held), ``"dequantized"``
        gives the dequantised tensor."""
        if self.source == "original":
            assert self.file is not None and self.key is not None
            return SourceRows(self.file, self.key, cast(torch.Tensor, module.weight).device)
        if self.codes is not None:  # the base was rewritten: decompose what it held at load
            return bnb.dequantize_codes(module, self.codes)
        return bnb.dequantize(module)

    def source_weight(self, module: nn.Module, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """W_src (out, in) whole, on the module's device, in ``dtype`` (None: its own): the weight that is
        decomposed (``source_rows`` without the streaming)."""
        w = self.source_rows(module)
        return w[:].to(dtype=dtype or w.dtype)

    def write(
        self, module: nn.Module, weight: torch.Tensor | Rows, minus: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> None:
        """Quantise ``weight`` (out, in), less ``minus`` = (u, v) as u v^T if given, into the base (keeping the
        original codes first where needed); chunk by chunk, no float copy of the whole weight (``bnb.requantize``)."""
        if self.source == "dequantized" and self.codes is None:
            self.codes = bnb.snapshot_codes(module)
        bnb.requantize(module, weight, minus)

    def restore(self, module: nn.Module) -> None:
        """Put Q(W) back exactly as loaded."""
        if self.source == "original":
            bnb.requantize(module, self.source_rows(module))
        elif self.codes is not None:
            bnb.restore_codes(module, self.codes)
            self.codes = None


class SourceRows:
    """W (out, in) of one layer in a safetensors file, read a block of rows at a time: ``rows[a:b]`` (or, of the
    transposed ``rows.T``, a block of columns) is a tensor on ``device`` in the file's dtype.

    The bytes are read with plain positioned reads into the block's own buffer, from the offsets in the file's
    header (the format: an 8-byte little-endian header length, a JSON header, then each tensor's row-major bytes).
    safetensors' own reader maps the file instead, and every page it touches counts in the process's resident
    memory until the mapping goes: measured, a pass over a weight's columns held 1.2 copies of the weight in mapped
    pages, more than the truncation's whole working set.
    """

    ndim = 2

    def __init__(self, file: Path, key: str, device: torch.device) -> None:
        self.file, self.key, self.device, self.transposed = file, key, torch.device(device), False
        self._stamp = _stamp(os.stat(file))
        self.shape, self.dtype, self.offset = _tensor_location(file, key)

    def _with(self, device: torch.device, transposed: bool) -> SourceRows:
        other = copy.copy(self)
        other.device, other.transposed = device, transposed
        other.shape = self.shape if transposed == self.transposed else torch.Size(self.shape[::-1])
        return other

    @property
    def T(self) -> SourceRows:  # noqa: N802  (as Tensor.T)
        return self._with(self.device, not self.transposed)

    def numel(self) -> int:
        return self.shape.numel()

    def detach(self) -> SourceRows:
        return self

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"SourceRows reads contiguous blocks (w[a:b]), got {rows!r}")
        out_f, in_f = self.shape[::-1] if self.transposed else self.shape
        start, stop, _ = rows.indices(in_f if self.transposed else out_f)
        stop = max(start, stop)
        size = self.dtype.itemsize
        with open(self.file, "rb", buffering=0) as f:
            if _stamp(os.fstat(f.fileno())) != self._stamp:  # replaced or rewritten: the header's offsets are stale
                raise RuntimeError(
                    f"{self.file} changed after its header was read (rewritten or replaced while the adapters were "
                    "set up, e.g. by a new download); run the set-up again once the checkpoint files stay put"
                )
            if not self.transposed:  # rows of the stored matrix: one contiguous run of bytes
                block = torch.empty(stop - start, in_f, dtype=self.dtype)
                _read_into(f, self.offset + start * in_f * size, block, self.file)
                return block.to(self.device)
            # columns start:stop of W: one read per stored row, of just those columns
            block = torch.empty(out_f, stop - start, dtype=self.dtype)
            for i in range(out_f):
                _read_into(f, self.offset + (i * in_f + start) * size, block[i], self.file)
        return block.T.to(self.device)  # (columns, out): a view, as Tensor.T[a:b] is

    def to(self, *args: torch.device | str | torch.dtype, **kwargs: torch.device | str | torch.dtype) -> Any:
        """As ``Tensor.to(device)`` / ``to(dtype)`` / ``to(device, dtype)``: another device keeps it streamed; a
        dtype reads the whole weight and converts it (the CUDA truncation, and small weights)."""
        device: Any = kwargs.get("device")
        dtype: Any = kwargs.get("dtype")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        target = torch.device(device) if device is not None else self.device
        if dtype is None:
            return self._with(target, self.transposed)
        return self[:].to(device=target, dtype=dtype)


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_MAX_HEADER = 100 << 20  # the format's own limit on the header's size


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file's content changed without reading it: device, inode, size, modification time."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _tensor_location(file: Path, key: str) -> tuple[torch.Size, torch.dtype, int]:
    """(shape, dtype, byte offset of the data) of tensor ``key`` in a safetensors file, from its header alone.

    safetensors' Python API gives shapes and dtypes but not where a tensor's bytes lie, which the positioned reads
    of ``SourceRows`` need; the header is a documented JSON object, read here directly."""
    if sys.byteorder != "little":
        raise RuntimeError("SourceRows reads safetensors' little-endian bytes as they are: little-endian machines only")
    with open(file, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= _MAX_HEADER:
            raise ValueError(f"{file} is not a safetensors file (its header length is unreadable)")
        header = json.loads(f.read(length))
        f.seek(0, os.SEEK_END)
        file_size = f.tell()
    entry = header.get(key)
    if entry is None:
        raise KeyError(f"{file} has no tensor {key!r}")
    if entry["dtype"] not in _DTYPES:
        raise ValueError(
            f"{_SETTING}='original': tensor {key!r} in {file} is stored as {entry['dtype']}, not a floating-point "
            f"dtype ({', '.join(_DTYPES)}); set quantized_source='dequantized' to decompose the dequantised weights"
        )
    shape, dtype = torch.Size(entry["shape"]), _DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    offset = 8 + length + begin
    if end - begin != shape.numel() * dtype.itemsize or offset + shape.numel() * dtype.itemsize > file_size:
        raise ValueError(f"{file}: tensor {key!r} has {end - begin} bytes for shape {tuple(shape)}, or the file is "
                         "truncated; the checkpoint is damaged")  # fmt: skip
    return shape, dtype, offset


def _read_into(f: Any, offset: int, out: torch.Tensor, file: Path) -> None:
    """Fill the contiguous tensor ``out`` with the bytes of ``f`` from ``offset`` (little-endian, as stored)."""
    if out.numel() == 0:
        return
    view = out.view(torch.uint8).numpy().data.cast("B")  # a byte view of the tensor: numpy has no bfloat16
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):  # one system call, no seek
            got = os.preadv(f.fileno(), [view[done:]], offset + done)
        else:
            f.seek(offset + done)
            got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"{file} ended early while reading its tensors; the checkpoint is truncated")
        done += got


def checkpoint_files(model: nn.Module) -> dict[str, Path]:
    """Tensor name -> safetensors file of the checkpoint ``model`` was loaded from (``model.name_or_path``)."""
    location = str(getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", ""))
    fix = "set quantized_source='dequantized' to decompose the dequantised weights instead"
    if not location:
        raise ValueError(
            f"{_SETTING}='original' reads the full-precision weights from the model's checkpoint files, but this "
            f"model has no name_or_path (it was not loaded with from_pretrained); {fix}"
        )
    folder = _local_folder(location)
    if folder is None:
        raise FileNotFoundError(
            f"{_SETTING}='original': the checkpoint {location!r} is neither a local folder nor in the local Hugging "
            f"Face cache with safetensors files; download it first, or {fix}"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(
            f"{_SETTING}='original': {folder} has no model.safetensors(.index.json) (only safetensors checkpoints "
            f"can be read tensor by tensor); {fix}"
        )
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def _local_folder(location: str) -> Path | None:
    if os.path.isdir(location):
        return Path(location)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("model.safetensors.index.json", "model.safetensors"):
        try:
            found = try_to_load_from_cache(location, name)
        except ValueError:  # not a Hub name either (e.g. a local folder that was deleted)
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def quantized_base(
    module: nn.Module, name: str, source: QuantizedSource, files: dict[str, Path] | None
) -> QuantizedBase:
    """The ``QuantizedBase`` of the quantised layer ``name``; checks (reading only the file header) that its
    original weight exists with the layer's shape."""
    if source == "dequantized":
        return QuantizedBase(module, source, None, None)
    assert files is not None
    key = f"{name}.weight"
    if key not in files:
        raise KeyError(
            f"{_SETTING}='original': the checkpoint has no tensor {key!r} for layer {name!r} (a renamed or converted "
            "checkpoint?); set quantized_source='dequantized' to decompose the dequantised weights instead"
        )
    from safetensors import safe_open

    with safe_open(str(files[key]), framework="pt") as f:
        shape = tuple(f.get_slice(key).get_shape())
    if shape != bnb.quantized_shape(module):
        raise ValueError(
            f"{_SETTING}='original': checkpoint tensor {key!r} has shape {shape}, the layer is (out, in) "
            f"{bnb.quantized_shape(module)}; set quantized_source='dequantized'"
        )
    return QuantizedBase(module, source, files[key], key)
