"""The one line that ends a successful ``fit``: the best monitored metric and its epoch, the checkpoints, the exports
and the command that opens the run in TensorBoard. ``KaSACLI.after_fit`` prints it on global rank 0. Every rank
calls ``fit_summary``: it reads ``trainer.log_dir``, a collective under DDP/FSDP."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger


def fit_summary(trainer: L.Trainer) -> str:
    """``fit done: best val/accuracy 0.9805 at epoch 2 (step 96) | checkpoints: best ..., last ... | exported: ...
    | tensorboard --logdir ...`` (the parts that apply to this run)."""
    from kasa_lightning.callbacks import AdapterExport, MetricsFile

    callbacks: list[L.Callback] = getattr(trainer, "callbacks", [])  # set by Lightning's callback connector
    parts = [f"fit done at step {trainer.global_step}"]
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint):
        best = _best(checkpoint, trainer)
        if best:
            parts = [best]
        paths = [("best", checkpoint.best_model_path), ("last", checkpoint.last_model_path)]
        shown = [f"{what} {path}" for what, path in paths if path]
        if shown:
            parts.append("checkpoints: " + ", ".join(shown))
    exported = [str(path) for cb in callbacks if isinstance(cb, AdapterExport) for path in cb.written]
    if exported:
        parts.append("exported: " + ", ".join(exported))
    metrics_files = [cb.file(trainer) for cb in callbacks if isinstance(cb, MetricsFile)]
    if metrics_files:
        parts.append(f"metrics: {metrics_files[0]}")
    logdirs = [lg.log_dir for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if logdirs:
        parts.append(f"tensorboard --logdir {logdirs[0]}")
    return " | ".join(parts)


def _best(checkpoint: ModelCheckpoint, trainer: L.Trainer) -> str | None:
    """``fit done: best <monitor> <score> at epoch E (step S)``; the epoch from the run's validation history (the
    first validation with the best score, the one ModelCheckpoint keeps)."""
    from kasa_lightning.callbacks import MetricsFile

    if checkpoint.monitor is None or checkpoint.best_model_score is None:
        return None
    score = float(checkpoint.best_model_score)
    where = ""
    history: list[dict[str, Any]] = next(
        (cb.epochs for cb in getattr(trainer, "callbacks", []) if isinstance(cb, MetricsFile)), []
    )
    for entry in history:
        value = entry.get("metrics", {}).get(checkpoint.monitor)
        if value is not None and math.isclose(float(value), score, rel_tol=1e-6, abs_tol=1e-12):
            where = f" at epoch {entry['epoch']} (step {entry['step']})"
            break
    if not where and checkpoint.best_model_path:
        where = f" ({Path(checkpoint.best_model_path).name})"
    return f"fit done: best {checkpoint.monitor} {score:.4f}{where}"
