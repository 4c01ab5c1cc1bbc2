"""``--ckpt_path last``: the newest ``last.ckpt`` under the run's ``trainer.default_root_dir``, or a refusal.

Lightning resolves ``ckpt_path="last"`` among the ``last*.ckpt`` files of the current run's ``ModelCheckpoint``
folders. The CLI gives every run a new ``lightning_logs/version_N/``, so those folders are empty when a run starts:
left to Lightning, it warns "there is no last checkpoint available. No checkpoint will be loaded" (a Python
warning, which a ``PYTHONWARNINGS`` filter hides) and trains from step 0 with exit status 0, although
``version_0`` or ``version_1`` holds the ``last.ckpt`` the user means.

Here ``last`` looks at the whole root: ``<root>/last.ckpt`` (what SIGTERM writes without a ``ModelCheckpoint``),
``<root>/checkpoints/``, ``<root>/<logger name>/<version>/checkpoints/`` (every ``lightning_logs/version_*``), and
the folder of each ``ModelCheckpoint`` given an explicit ``dirpath``. Of the files named ``last.ckpt`` or
``last-vN.ckpt`` there, the one written most recently (file modification time) is used, and its path is printed.

Why the modification time and not the step stored in the file: it is Lightning's own rule among its candidates, it
needs no read of every checkpoint, and the most recently written ``last.ckpt`` is the state a stopped, killed or
interrupted job left behind. Steps of different runs are not comparable: an older finished run can hold more steps
than the newer run the user wants to continue (another config, a restart). Copying a run folder without keeping
modification times (``cp`` without ``-p``) changes the choice; give the path itself then.

No ``last.ckpt`` anywhere under the root is an error naming ``--ckpt_path last``, the root and the fix; a run is
never started fresh from ``last``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["find_last_checkpoints", "resolve_last_checkpoint"]

_LAST_NAME = re.compile(r"last(-v\d+)?\.ckpt")
_PATTERNS = ("last*.ckpt", "checkpoints/last*.ckpt", "*/*/checkpoints/last*.ckpt")


def find_last_checkpoints(root: str | Path, extra_dirs: list[str | Path] | None = None) -> list[Path]:
    """Every ``last.ckpt`` / ``last-vN.ckpt`` under ``root`` (see the module docstring for where), newest first
    (modification time, then path)."""
    root = Path(root)
    found = {p for pattern in _PATTERNS for p in root.glob(pattern)}
    for directory in extra_dirs or []:
        found.update(Path(directory).glob("last*.ckpt"))
    files = [p for p in found if _LAST_NAME.fullmatch(p.name) and p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, str(p)), reverse=True)


def resolve_last_checkpoint(trainer: Any, command: str = "fit") -> str:
    """The path ``--ckpt_path last`` stands for in ``trainer``'s run (``trainer.default_root_dir`` and the
    ``dirpath`` of its ``ModelCheckpoint`` callbacks); prints the choice to stderr on global rank 0.

    Raises:
        FileNotFoundError: no ``last.ckpt`` under the root.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = Path(trainer.default_root_dir)
    dirs: list[str | Path] = [
        cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
    ]
    candidates = find_last_checkpoints(root, dirs)
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under trainer.default_root_dir {root} (looked in {root}/, "
            f"{root}/checkpoints/, {root}/*/version_*/checkpoints/"
            + "".join(f", {d}/" for d in dirs)
            + f"). Give the checkpoint's path as --ckpt_path, set --trainer.default_root_dir to the run's root, or "
            f"run {command} without --ckpt_path for a new run."
        )
    chosen = candidates[0]
    if trainer.is_global_zero:
        others = f"; other last checkpoints, older: {', '.join(map(str, candidates[1:]))}" if candidates[1:] else ""
        print(
            f"--ckpt_path last: using {chosen}, the most recently written last checkpoint under {root}{others}",
            file=sys.stderr,
            flush=True,
        )
    return str(chosen)
