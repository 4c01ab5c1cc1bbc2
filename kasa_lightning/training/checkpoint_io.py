"""How checkpoint files are written and read: atomically, and without running code from the file.

`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin that ``KaSAModule`` installs on every Trainer it runs in
(``setup`` hook; a CheckpointIO you configured yourself is left alone):

* **Writes** go to a temporary file in the checkpoint's own folder, fsynced, then ``os.replace``d over the real
  name (``kasa_lightning.kasa.atomic``). Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction
  whose temporary file is ``tempfile.mkstemp()`` in ``TMPDIR``; when ``TMPDIR`` is on another filesystem, the
  final move is a copy onto the real name, so a kill or a full disk during it leaves a truncated checkpoint under
  the real name (and an orphan in ``TMPDIR``). Here a failed write leaves the previous file intact and removes the
  temporary. Remote URLs (``s3://``...) keep Lightning's own write.
* **Reads** use ``torch.load(weights_only=True)``: a checkpoint may hold tensors, numbers, strings and plain
  containers only, which is all a kasa-lightning checkpoint holds (the RNG states are stored as tensors for that
  reason), so no global is allow-listed beyond torch's own. Lightning reads ``http(s)://`` checkpoints with
  ``weights_only=False``, which runs any pickle payload in the file; here they are downloaded (bounded by a
  timeout) and read the same safe way. A file that is not a checkpoint, or one that asks for code, raises
  `UnsafeCheckpointError` naming the file and what it asked for.

`load_checkpoint_safely(path_or_url)` is the read on its own (``KaSAModule.load_from_checkpoint`` and the
``export`` command use it too).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import urllib.request
from collections.abc import Callable
from typing import IO, Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol, get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from kasa_lightning.kasa.atomic import write_atomically

#: globals a kasa-lightning checkpoint needs beyond torch's default weights-only set: none (see the module doc).
SAFE_GLOBALS: list[Any] = []
#: seconds to wait for a remote checkpoint's server (connect and each read)
URL_TIMEOUT_S = 60.0


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file could not be read as plain data: it is not a checkpoint, or it asks to run code."""


def is_url(path: Any) -> bool:
    """Whether ``path`` is an ``http(s)://`` URL."""
    return isinstance(path, str) and re.match(r"^https?://", path) is not None


def read_url(url: str) -> io.BytesIO:
    """The bytes at ``url`` (timeout `URL_TIMEOUT_S`)."""
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 (http(s) only: is_url)
            return io.BytesIO(response.read())
    except OSError as err:  # URLError, HTTPError and timeouts are OSErrors
        raise OSError(f"could not download the checkpoint {url}: {err}") from err


def explain(source: str, err: Exception) -> UnsafeCheckpointError:
    """The `UnsafeCheckpointError` for torch's weights-only ``UnpicklingError`` ``err`` (without its advice to
    load with ``weights_only=False``)."""
    text = str(err)
    asked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(
        r"Unsupported (operand[^\n.]*|class [\w.]+)", text
    )
    if asked is not None:
        return UnsafeCheckpointError(
            f"refusing to load {source}: it is not a plain checkpoint. Its pickle asks for "
            f"{asked.group(1)!r}, which no kasa-lightning checkpoint holds (loading it could run code from the file). "
            "Load checkpoints written by `fit` (tensors, numbers and plain containers only)."
        )
    first = next(
        (
            line.strip()
            for line in text.splitlines()
            if line.strip() and "weights_only" not in line and "Weights only load failed" not in line
        ),
        "",
    )
    first = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return UnsafeCheckpointError(
        f"{source} is not a readable PyTorch checkpoint ({first[:300]}). Pass a .ckpt file written by `fit`."
    )


def load_checkpoint_safely(
    path_or_url: str | os.PathLike | IO[bytes],
    map_location: Any = "cpu",
    safe_globals: list[Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: a local path, an fsspec URL, or ``http(s)://``
    (downloaded, never with ``weights_only=False``). ``safe_globals`` adds classes to allow (none by default).
    Raises ``FileNotFoundError`` for a missing local file and `UnsafeCheckpointError` for anything that is not plain
    checkpoint data; ``name`` names a stream in that message."""
    source = str(path_or_url) if isinstance(path_or_url, (str, os.PathLike)) else (name or "the checkpoint stream")
    if isinstance(path_or_url, (str, os.PathLike)) and is_url(str(path_or_url)):
        return _load(read_url(str(path_or_url)), source, map_location, safe_globals)
    if isinstance(path_or_url, (str, os.PathLike)):
        fs = get_filesystem(os.fspath(path_or_url))
        if not fs.exists(str(path_or_url)):
            raise FileNotFoundError(f"Checkpoint file not found: {path_or_url}")
        with fs.open(str(path_or_url), "rb") as f:
            return _load(f, source, map_location, safe_globals)
    return _load(path_or_url, source, map_location, safe_globals)


def _load(f: IO[bytes], source: str, map_location: Any, safe_globals: list[Any] | None) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + list(safe_globals or [])):
            return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 (a non-checkpoint file fails in many ways: zip, pickle, index errors)
        from kasa_lightning.cli_errors import foreign_file_message

        foreign = foreign_file_message(source, flag="")  # an adapter .safetensors: say what it is, not "pickle"
        if foreign is not None:
            raise UnsafeCheckpointError(foreign) from None
        raise explain(source, err) from None  # not torch's text: it advises turning the protection off


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes in the destination folder and weights-only reads (see the
    module doc). ``load_checkpoint(..., weights_only=False)`` passed explicitly (``trainer.fit(weights_only=False)``)
    falls back to Lightning's unsafe read: only for files you trust."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: dict[str, int] = {}  # path -> global step, of the files this plugin wrote and did not remove

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        else:
            # serialised in memory first (as Lightning does): a full disk then surfaces as OSError(ENOSPC), not as
            # torch's zip writer's RuntimeError
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            write_atomically(path, lambda f: f.write(buffer.getbuffer()))
        self._saved[str(path)] = int(checkpoint.get("global_step", -1))

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        self._saved.pop(str(path), None)

    def last_saved(self) -> tuple[str, int] | None:
        """(path, global step) of the newest checkpoint this plugin wrote that still exists, or None."""
        existing = [(step, path) for path, step in self._saved.items() if get_filesystem(path).exists(path)]
        if not existing:
            return None
        step, path = max(existing)
        return path, step

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        return load_checkpoint_safely(path, map_location=map_location)


def install(trainer: Any) -> None:
    """Give ``trainer.strategy`` an `AtomicCheckpointIO` unless the user chose a CheckpointIO
    (``Trainer(plugins=[...])``): replaces Lightning's default ``TorchCheckpointIO``, also as the base of a wrapping
    ``AsyncCheckpointIO``."""
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    strategy = trainer.strategy
    chosen = getattr(getattr(trainer, "_accelerator_connector", None), "checkpoint_io", None)

    from lightning.pytorch.strategies import Strategy

    if type(strategy).load_checkpoint is not Strategy.load_checkpoint and not hasattr(strategy, "_kasa_verified"):
        # FSDP (full state) and other sharding strategies read the file themselves, not through the CheckpointIO,
        # with an unrestricted unpickler: check the file with a weights-only read first
        strategy.load_checkpoint = _verified(strategy.load_checkpoint)
        strategy._kasa_verified = True
    current = getattr(strategy, "_checkpoint_io", None)
    if chosen is not None and not isinstance(chosen, _WrappingCheckpointIO):
        return
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(current, _WrappingCheckpointIO):
        if current.checkpoint_io is None:
            current.checkpoint_io = AtomicCheckpointIO()
        elif type(current.checkpoint_io) is TorchCheckpointIO:  # the default the strategy filled in
            current._checkpoint_io = AtomicCheckpointIO()


def _verified(load: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def load_checkpoint(checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is not False and os.path.isfile(str(checkpoint_path)):
            load_checkpoint_safely(checkpoint_path)  # raises for anything but plain checkpoint data
        return load(checkpoint_path, weights_only=weights_only)

    return load_checkpoint


__all__ = [
    "AtomicCheckpointIO",
    "UnsafeCheckpointError",
    "explain",
    "install",
    "is_url",
    "load_checkpoint_safely",
    "read_url",
]
