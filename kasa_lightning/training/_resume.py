"""What ``fit --ckpt_path`` keeps from the checkpoint and what it takes from the user (used by ``KaSAModule``).

* Settings that decide what the saved tensors are (the backbone, the task and its labels, the adapter method,
  rank, scaling, truncation and targets) must equal the checkpoint's: another value is refused with an error that
  names the setting, both values and the fix (``structural_differences``).
* Every other model setting (beta, gamma, dropout, the schedule, ...) and the optimiser's hyperparameters
  (``lr``, ``weight_decay``, ...) are the user's; where they differ from the checkpoint's, a warning says so
  (``changed_settings``, ``apply_optimizer_settings``). Trainer settings (``max_epochs``, ``max_steps``) are the
  user's as well: the checkpoint records progress, not limits.
* A run stopped by ``max_steps`` in the middle of an epoch is recorded as being in that epoch
  (``uncount_unfinished_epoch``), so that resuming continues the epoch instead of skipping the rest of it.
"""

from __future__ import annotations

from typing import Any, cast

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

# model settings (``KaSAModule.__init__`` arguments) that decide the meaning of the saved tensors
STRUCTURAL = ("backbone", "backbone_config", "task", "num_labels")
# AdapterConfig fields that decide the shapes and meaning of the saved tensors: AdapterConfig.structure() plus
# truncation_mode (where the removed part lives)
STRUCTURAL_ADAPTER = (
    "method",
    "r",
    "alpha",
    "truncate",
    "singular_values",
    "target_modules",
    "modules_to_save",
    "truncation_mode",
)
# optimiser hyperparameters that a resume takes from the user rather than from the saved optimiser state
OPTIMIZER_SETTINGS = ("lr", "weight_decay", "betas", "eps", "momentum", "dampening", "alpha")


def _flatten(hparams: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in hparams.items():
        if key.startswith("_") and key != "_class_path":  # LightningCLI's bookkeeping (_instantiator)
            continue
        if key == "adapter" and isinstance(value, dict):
            out.update({f"adapter.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _same(a: Any, b: Any, key: str) -> bool:
    if key in ("adapter.target_modules", "adapter.modules_to_save") and isinstance(a, list) and isinstance(b, list):
        return sorted(a) == sorted(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _is_structural(key: str) -> bool:
    if key.startswith("adapter."):
        return key.split(".", 1)[1] in STRUCTURAL_ADAPTER
    return key in STRUCTURAL or key == "_class_path"


def structural_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, checkpoint's value, current value) for each structural setting that differs."""
    a, b = _flatten(saved), _flatten(current)
    return [(k, a[k], b[k]) for k in a if k in b and _is_structural(k) and not _same(a[k], b[k], k)]


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, checkpoint's value, current value) for each other setting that differs."""
    a, b = _flatten(saved), _flatten(current)
    return [(k, a[k], b[k]) for k in a if k in b and not _is_structural(k) and not _same(a[k], b[k], k)]


def refusal(diffs: list[tuple[str, Any, Any]]) -> str:
    """The error message for structural differences."""
    lines = [f"  model.{'class_path' if k == '_class_path' else k}: checkpoint {a!r}, yours {b!r}" for k, a, b in diffs]
    first, saved, _ = diffs[0]
    first = "class_path" if first == "_class_path" else first
    return (
        "the checkpoint was trained with other model settings than yours:\n" + "\n".join(lines) + "\n"
        "These decide what the saved tensors are, so the checkpoint cannot continue or load under yours. "
        f"Use the checkpoint's values (e.g. --model.{first} {saved!r}, or the run's "
        "config.yaml), or start a new run without --ckpt_path."
    )


def warn_changed(diffs: list[tuple[str, Any, Any]]) -> None:
    for key, saved, current in diffs:
        rank_zero_warn(
            f"resuming with model.{key}={current!r}; the checkpoint was trained with {saved!r} "
            "(your value is used from here on)"
        )


def warn_changed_limits(saved: dict[str, Any], trainer: L.Trainer) -> None:
    """Warn where ``max_epochs``/``max_steps`` differ from the run that wrote the checkpoint (the new ones apply)."""
    for key, value in saved.items():
        current = getattr(trainer, key, value)
        if current != value:
            rank_zero_warn(
                f"resuming with trainer.{key}={current!r}; the checkpoint's run had {value!r} (your value is used). "
                "The built-in learning-rate schedule is laid out over the new total number of steps, so the steps "
                "before the checkpoint followed another schedule than a run started with these limits."
            )


def optimizer_settings(optimizer: Any) -> list[dict[str, Any]]:
    """The user's hyperparameters of each parameter group, read before any scheduler or restore changes them."""
    return [{k: g[k] for k in OPTIMIZER_SETTINGS if k in g} for g in optimizer.param_groups]


def apply_optimizer_settings(trainer: L.Trainer, wanted: list[list[dict[str, Any]]]) -> None:
    """After a restore, put the user's optimiser hyperparameters back (the saved optimiser state holds the old
    ones) and warn where they differ. A learning rate is changed by scaling the group's current rate and its
    schedulers' base rates by new / old, which keeps the schedule's position and shape (warmup, decay)."""
    for optimizer, groups in zip(trainer.optimizers, wanted):
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        for g_index, (group, mine) in enumerate(zip(optimizer.param_groups, groups)):
            name = group.get("name", g_index)
            for key, value in mine.items():
                if key == "lr":
                    old = group.get("initial_lr", group["lr"])
                    if old == value:
                        continue
                    ratio = value / old if old else None
                    group["lr"] = group["lr"] * ratio if ratio is not None else value
                    if "initial_lr" in group:
                        group["initial_lr"] = value
                    for scheduler in schedulers:
                        if hasattr(scheduler, "base_lrs"):
                            scheduler.base_lrs[g_index] = value
                        if hasattr(scheduler, "_last_lr"):
                            scheduler._last_lr[g_index] = group["lr"]
                elif _same(group.get(key), value, key):
                    continue
                else:
                    old = group.get(key)
                    group[key] = value
                rank_zero_warn(
                    f"resuming with optimizer {key}={value!r} for parameter group {name!r}; the "
                    f"checkpoint's optimizer state had {old!r} (your value is used from here on)"
                )


def uncount_unfinished_epoch(trainer: L.Trainer | None, checkpoint: dict[str, Any]) -> None:
    """Record an epoch that ``max_steps`` (or any early stop) cut short as unfinished.

    Lightning's fit loop runs its end-of-epoch step even when ``max_steps`` ends the epoch early: the epoch is
    counted as processed and completed while the epoch loop's batch count says e.g. 30 of 32. A checkpoint of
    that state (the one written at the end of fit) resumes in the NEXT epoch with 30 batches already done, so the
    last 2 batches of this epoch and the first 30 of the next one are never trained. Here the checkpoint's epoch
    progress is set back to "started, not processed", the state of a mid-epoch checkpoint, which Lightning resumes
    at the next batch of the same epoch.
    """
    if trainer is None or "loops" not in checkpoint or trainer.state.fn != "fit":
        return
    fit_loop = trainer.fit_loop
    batches = fit_loop.epoch_loop.batch_progress
    epochs = fit_loop.epoch_progress
    if batches.is_last_batch or not 0 < batches.current.completed < trainer.num_training_batches:
        return
    current = cast(Any, epochs.current)  # a _ProcessedTracker: typed as its base tracker
    if current.processed != current.started:  # still inside the epoch: nothing was counted
        return
    state = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for part in ("total", "current"):
        state[part]["processed"] = state[part]["completed"] = state[part]["started"] - 1
    checkpoint["epoch"] = state["current"]["completed"]
