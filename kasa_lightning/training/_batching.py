"""Keep the effective batch size when the number of processes changes.

The paper states effective batch sizes (e.g. 16 for Commonsense170K). With data parallelism every process draws
its own ``data.batch_size`` rows, so the effective batch is

    effective = data.batch_size x world_size x trainer.accumulate_grad_batches

and silently grows when devices are added. Setting ``data.global_batch_size`` (``BaseDataModule``) fixes the
effective batch instead: before the fit loop starts, ``KaSAModule.setup`` calls ``apply_global_batch_size``, which
sets Lightning's own ``trainer.accumulate_grad_batches`` (the attribute the fit loop and
``trainer.estimated_stepping_batches`` read) to ``global_batch_size / (batch_size x world_size)``, and refuses a
setting that does not divide. Lightning's ``GradientAccumulationScheduler`` callback changes the same attribute at
every epoch start, so the two cannot be combined.
"""

from __future__ import annotations

from typing import Any


def accumulation_steps(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """The number of micro-batches to accumulate so that ``batch_size x world_size x steps == global_batch_size``.

    Raises ``ValueError`` naming the settings when no whole number of steps gives ``global_batch_size``.
    """
    per_step = batch_size * world_size
    if global_batch_size < 1 or batch_size < 1 or world_size < 1:
        raise ValueError(
            f"data.global_batch_size={global_batch_size}, data.batch_size={batch_size} and the "
            f"number of processes ({world_size}) must all be >= 1"
        )
    if global_batch_size % per_step:
        divisors = [b for b in range(1, batch_size + 1) if global_batch_size % (b * world_size) == 0]
        hint = (
            f"set data.batch_size to one of {divisors}"
            if divisors
            else f"use a number of processes (trainer.devices x trainer.num_nodes) that divides {global_batch_size}"
        )
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not a multiple of data.batch_size={batch_size} x "
            f"{world_size} process(es) = {per_step}, so no gradient accumulation gives that effective batch: {hint}, "
            "or change data.global_batch_size (the effective batch the paper's configs state)."
        )
    return global_batch_size // per_step


def apply_global_batch_size(trainer: Any) -> int | None:
    """Set ``trainer.accumulate_grad_batches`` from ``trainer.datamodule.global_batch_size`` (if set) and the
    trainer's world size; return the number of accumulation steps, or None when no global batch size is set."""
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    datamodule = getattr(trainer, "datamodule", None)
    global_batch = getattr(datamodule, "global_batch_size", None)
    if global_batch is None:
        return None
    batch_size = getattr(datamodule, "batch_size", None)
    if not isinstance(batch_size, int):
        raise TypeError(
            f"data.global_batch_size={global_batch} needs a DataModule with an integer batch_size "
            f"(the per-process micro-batch); {type(datamodule).__name__} has {batch_size!r}"
        )
    if any(isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks):
        raise ValueError(
            "data.global_batch_size sets trainer.accumulate_grad_batches and cannot be combined with "
            "a GradientAccumulationScheduler callback: remove one of them"
        )
    steps = accumulation_steps(global_batch, batch_size, trainer.world_size)
    if trainer.accumulate_grad_batches not in (1, steps):
        raise ValueError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} contradicts data.global_batch_size="
            f"{global_batch} (data.batch_size {batch_size} x {trainer.world_size} process(es) needs {steps}): "
            "remove trainer.accumulate_grad_batches (data.global_batch_size sets it), or unset data.global_batch_size"
        )
    trainer.accumulate_grad_batches = steps
    return steps
