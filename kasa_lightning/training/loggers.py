"""``AtomicTensorBoardLogger``: Lightning's TensorBoard logger whose run folder (``version_N``) is claimed
atomically, so that runs started at the same moment into one ``default_root_dir`` never share a folder, and whose
folder is removed again when the run fails before it logged anything.

Lightning's logger picks ``max(existing versions) + 1`` by listing the folder and creates it later, when the
first file is written; two runs that list before either creates get the same ``version_N``: one ``config.yaml``
and ``hparams.yaml`` survive, the event files merge into one TensorBoard run and exports and heatmaps overwrite
each other. Here the choice is ``os.mkdir`` of the folder (which fails if it exists) and, when another run was
first, the next number: the folder belongs to the run whose ``mkdir`` succeeded.

The CLI (``kasa_lightning.cli.KaSACLI``) uses this logger wherever Lightning would use its default one
(``trainer.logger`` unset or ``true``). Name it in a config to keep it with other settings:

.. code-block:: yaml

    trainer:
      logger:
        class_path: kasa_lightning.training.loggers.AtomicTensorBoardLogger
        init_args: {save_dir: runs/x}
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

#: what a run folder holds right after a start: the saved config, the hyperparameters and the event file(s)
STARTUP_FILES = ("config.yaml", "hparams.yaml")
_EVENTS_PREFIX = "events.out.tfevents."
_MAX_CLAIM_TRIES = 10_000


def claim_next_version(parent: str | os.PathLike) -> tuple[int, str]:
    """Create ``<parent>/version_<N>`` for the smallest ``N`` above every existing ``version_<k>`` whose ``mkdir``
    succeeds (``os.mkdir`` fails when the folder exists, so of two processes asking at once each gets its own).
    Returns ``(N, path)``; creates ``parent`` if needed."""
    parent = os.fspath(parent)
    os.makedirs(parent, exist_ok=True)
    taken = [int(name[8:]) for name in os.listdir(parent) if name.startswith("version_") and name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    for _ in range(_MAX_CLAIM_TRIES):
        path = os.path.join(parent, f"version_{version}")
        try:
            os.mkdir(path)
        except FileExistsError:
            version += 1  # another run was first (or a file has that name): try the next number
            continue
        except FileNotFoundError:  # a failed run removed the (then empty) parent meanwhile
            os.makedirs(parent, exist_ok=True)
            continue
        return version, path
    raise RuntimeError(f"could not claim a run folder under {parent} after {_MAX_CLAIM_TRIES} tries")


class AtomicTensorBoardLogger(TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` (same arguments) with two changes when ``version`` is not
    given and ``save_dir`` is local:

    * the ``version_N`` folder is created atomically when the version is first asked for (global rank 0 only;
      the others follow rank 0's folder, which the Trainer broadcasts), see ``claim_next_version``;
    * if the run fails (``finalize("failed")``) before this logger logged any metric and the folder it created
      holds nothing but ``config.yaml``, ``hparams.yaml`` and TensorBoard event files, the folder is removed, so a
      bad setting does not leave an empty ``version_N`` behind. Only that folder is touched, file by file (and
      ``<save_dir>/<name>`` and ``<save_dir>`` and the folders above it that this logger created, while empty).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claimed: str | None = None  # the folder this logger created, if it did
        self._created_parents: list[str] = []  # the folders above it that it created, deepest first
        self._logged_metrics = False

    def _get_next_version(self) -> int:
        if getattr(rank_zero_only, "rank", 0) != 0 or not _is_local_file_protocol(self.root_dir):
            return super()._get_next_version()
        parent = os.path.expanduser(os.path.expandvars(self.root_dir))  # as log_dir expands it
        self._created_parents = _missing_folders(parent)
        version, self._claimed = claim_next_version(parent)
        return version

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if any(key != "hp_metric" for key in metrics):  # hp_metric is the placeholder of log_hyperparams
            self._logged_metrics = True
        super().log_metrics(metrics, step)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        claimed = self._claimed
        unused = status == "failed" and claimed is not None and not self._logged_metrics
        if unused and claimed is not None and remove_unused_run_dir(claimed):
            for folder in self._created_parents:  # <save_dir>/<name>, then <save_dir> and up, as far as created
                with contextlib.suppress(OSError):  # only while empty: another run may have claimed a version
                    os.rmdir(folder)


def _missing_folders(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while path and not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_unused_run_dir(path: str | os.PathLike) -> bool:
    """Remove the run folder ``path`` if it holds only start-up files (``STARTUP_FILES`` and TensorBoard event
    files, no sub-folders); returns whether it did. Deletes those files one by one, then the folder with
    ``os.rmdir`` (which fails, harmlessly, if anything else appeared meanwhile)."""
    path = os.fspath(path)
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return False
    startup = [n for n in names if n in STARTUP_FILES or n.startswith(_EVENTS_PREFIX)]
    if len(startup) != len(names) or any(not os.path.isfile(os.path.join(path, n)) for n in names):
        return False
    for name in startup:
        os.unlink(os.path.join(path, name))
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True
