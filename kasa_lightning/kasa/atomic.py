"""Atomic file writes: a reader (or a resumed run) sees the previous file or the complete new one, never a part.

The temporary file is created in the destination folder (so the final ``os.replace`` is a rename on one
filesystem, whatever ``TMPDIR`` is), flushed and fsynced, then renamed over the destination, and the folder is
fsynced so the rename survives a power cut. On any error (a full disk, an interrupt) the temporary file is removed
and the previous file is left as it was (a process killed mid-write cannot clean up: its hidden temporary
``.<name>.<random>.tmp`` is never read, and the next successful write of the same name removes it). New files get
the usual mode ``0o666 & ~umask`` (0644 under umask 022),
not the 0600 of ``tempfile.mkstemp``.

Pure Python (no torch needed): ``kasa_lightning.training.checkpoint_io`` writes Lightning checkpoints through it,
and the safetensors writers of this package use it for adapter files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file."""
    try:  # Linux reports the umask without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_name(path: str | os.PathLike) -> str:
    """The prefix of the temporary files written for ``path`` (hidden, in the same folder)."""
    return f".{Path(path).name}."


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, and rename it to ``path``.

    On any exception (``BaseException``: a ``KeyboardInterrupt`` too) the temporary file is deleted and ``path``
    keeps its previous content. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_name(path), suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    for orphan in path.parent.glob(f"{temporary_name(path)}*{TMP_SUFFIX}"):  # left by a process killed mid-write
        try:
            orphan.unlink()
        except OSError:
            pass
    return path


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """``write_atomically`` for a bytes object."""
    return write_atomically(path, lambda f: f.write(data))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
