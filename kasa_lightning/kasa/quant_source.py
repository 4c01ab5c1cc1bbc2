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
    transposed ``rows.T``, a block of columns) is a tensor on ``device`` in the file's dtype. Each read opens the
    file and closes it again: a mapping held open would keep every page read so far in the process's resident
    memory, which is the whole weight by the end of a pass."""

    ndim = 2

    def __init__(self, file: Path, key: str, device: torch.device) -> None:
        from safetensors import safe_open

        self.file, self.key, self.device, self.transposed = file, key, torch.device(device), False
        with safe_open(str(file), framework="pt", device="cpu") as f:  # the header only
            part = f.get_slice(key)
            self.shape = torch.Size(part.get_shape())
            self.dtype = _DTYPES[part.get_dtype()]

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
        from safetensors import safe_open

        if not self.transposed:
            with safe_open(str(self.file), framework="pt", device="cpu") as f:
                return f.get_slice(self.key)[rows].to(self.device)
        # columns of W: they span every row of the file, so they are gathered from bands of rows, each read with
        # the file opened and closed again (one read of all rows would map every page of the weight)
        out_f, in_f = self.shape[1], self.shape[0]
        cols = range(in_f)[rows]
        block = torch.empty(len(cols), out_f, dtype=self.dtype)
        band = max(1, _BAND_BYTES // (in_f * self.dtype.itemsize))
        for start in range(0, out_f, band):
            stop = min(out_f, start + band)
            with safe_open(str(self.file), framework="pt", device="cpu") as f:
                block[:, start:stop] = f.get_slice(self.key)[start:stop, rows].T
        return block.to(self.device)

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


_BAND_BYTES = 1 << 20  # rows read at a time when columns are gathered
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


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
