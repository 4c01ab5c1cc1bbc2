"""``AdapterExport``: at the end of fit, export the best (or last) adapter in the method package's formats to
``<log_dir>/export/<which>/<format>/``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from kasa_lightning.training.artifacts import FORMATS, ExportFormat, export_module
from kasa_lightning.training.fsdp import shards_parameters

if TYPE_CHECKING:
    from kasa_lightning.training.module import KaSAModule


class AdapterExport(L.Callback):
    """Args: ``formats`` (peft-kasa, peft-lora, merged, adapter); ``which``: ``"best"`` (the ModelCheckpoint's
    best model; falls back to the last weights when there is none) or ``"last"``."""

    def __init__(self, formats: list[ExportFormat] | None = None, which: Literal["best", "last"] = "best") -> None:
        self.formats: list[ExportFormat] = list(formats or ["peft-lora"])
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ValueError(f"AdapterExport.formats {bad} unknown; choose from {list(FORMATS)}")
        if which not in ("best", "last"):
            raise ValueError(f"AdapterExport.which={which!r}: choose 'best' or 'last'")
        self.which = which
        self.written: list[Path] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = (
            trainer.checkpoint_callback.best_model_path
            if isinstance(trainer.checkpoint_callback, ModelCheckpoint)
            else ""
        )
        module, which = cast("KaSAModule", pl_module), "last"  # the export needs KaSAModule's adapters
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: a broadcast under DDP/FSDP
        if not (self.which == "best" and best) and shards_parameters(trainer.strategy):
            copy = module.unwrapped_copy()  # gathers the sharded state: every rank takes part, rank 0 gets it
            if copy is None:  # the other ranks: rank 0 exports
                return
            module = copy
        if not trainer.is_global_zero:
            return
        if self.which == "best" and best:
            module, which = type(module).load_from_checkpoint(best, map_location="cpu"), "best"
        root = log_dir / "export" / which
        for fmt in self.formats:
            self.written.append(export_module(module, fmt, root / fmt, overwrite=True))  # this run's own folder
