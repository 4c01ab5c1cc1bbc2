"""`StopCheckpoint`: a resumable checkpoint of the step where training stopped, whatever stopped it.

``KaSAModule.configure_callbacks`` installs it in every fit; nothing needs to be configured.

* End of fit (``max_steps``, ``max_epochs``, early stopping): Lightning 2.6 writes ``last.ckpt`` only at a step where
  a top-k checkpoint was written as well. With ``monitor`` set, a run stopped by ``max_steps`` mid-epoch, or whose
  last epochs did not improve the metric, kept a ``last.ckpt`` of an earlier step. This callback writes
  ``last.ckpt`` of the final step (through the ``ModelCheckpoint`` itself, so its bookkeeping stays right).
* SIGTERM (what a cluster scheduler sends before it kills a job): Lightning's signal handler only sets
  ``trainer.received_sigterm``; the loop stops after the current batch with ``SIGTERMException``, a ``SystemExit``
  whose status is 0, and nothing after the last regular checkpoint was saved. Here ``on_exception`` writes
  ``last.ckpt`` of that step (each ``ModelCheckpoint`` with ``save_last``; without one,
  ``<default_root_dir>/last.ckpt``) and sets the exit status to 143 (128 + SIGTERM), so that a scheduler and a
  shell see that the run did not finish. ``fit --ckpt_path .../last.ckpt`` then resumes with the next batch.
* SIGTERM during fit's validation: the checkpoint records that validation as started and not finished, which
  Lightning resumes by running the validation again from its first batch (its "restarted mid-evaluation" case,
  with the batch counters of that validation set back to 0). Left alone, Lightning takes the checkpoint for one
  written after the epoch's last training batch and skips that epoch's validation on resume: no metrics for it,
  no top-k checkpoint, a possibly wrong best epoch. The metric states of a half-done validation are not saved, so
  it is redone whole rather than continued.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loops.progress import _StartedTracker
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGTERM_EXIT_STATUS = 143  # 128 + signal 15, what a shell reports for a process ended by SIGTERM


class StopCheckpoint(L.Callback):
    """Writes ``last.ckpt`` of the final step at the end of fit and on SIGTERM (then exits with status 143)."""

    def __init__(self) -> None:
        self._in_validation = False  # SIGTERM arrived during fit's validation (set while saving)
        self._validation_restarted = False  # this run resumes a checkpoint saved during a validation

    def state_dict(self) -> dict[str, Any]:
        return {"validation_interrupted": self._in_validation}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validation_restarted = bool(state_dict.get("validation_interrupted", False))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._in_validation:
            _mark_validation_unfinished(checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_restarted:  # Lightning has read the restart stage: undo the marker's extra batch
            total = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total
            assert isinstance(total, _StartedTracker)  # Lightning's batch progress counts started batches
            total.ready, total.started = total.completed, total.completed
            self._validation_restarted = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in _last_savers(trainer):
            _save_last(trainer, callback)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        exception.code = SIGTERM_EXIT_STATUS
        if trainer.global_step == 0 or trainer.sanity_checking:
            print(
                f"SIGTERM before the first optimiser step: nothing to save; exiting with status {SIGTERM_EXIT_STATUS}",
                file=sys.stderr,
                flush=True,
            )
            return
        self._in_validation = trainer.validating and not trainer.sanity_checking
        paths = []
        savers = _last_savers(trainer)
        for callback in savers:
            _save_last(trainer, callback)
            paths.append(callback.last_model_path)
        if not savers:
            path = str(Path(trainer.default_root_dir) / "last.ckpt")
            trainer.save_checkpoint(path)
            paths.append(path)
        if trainer.is_global_zero:
            during = (
                f" during validation (epoch {trainer.current_epoch}; the resumed run validates it again from its "
                "first batch)"
                if self._in_validation
                else ""
            )
            print(
                f"SIGTERM at global step {trainer.global_step}{during}: saved {', '.join(paths)}; exiting with "
                f"status {SIGTERM_EXIT_STATUS}. Resume with: fit ... --ckpt_path {paths[0]}",
                file=sys.stderr,
                flush=True,
            )


def _last_savers(trainer: L.Trainer) -> list[ModelCheckpoint]:
    return [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]


def _save_last(trainer: L.Trainer, callback: ModelCheckpoint) -> None:
    """``callback``'s ``last.ckpt`` of the current step, unless it already wrote one at this step."""
    if getattr(trainer, "fast_dev_run", False) or trainer.global_step == 0:
        return
    if callback.last_model_path and callback._last_global_step_saved == trainer.global_step:
        return  # Lightning writes last together with every top-k checkpoint, so this step's last exists
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def _mark_validation_unfinished(progress: dict[str, Any]) -> None:
    """Rewrite a saved validation batch progress (Lightning's ``_BatchProgress`` state) as "this validation started
    one batch and finished none": Lightning's restart then finds it mid-evaluation, sets the current counters back
    to the completed ones (0) and runs the whole validation again."""
    current, total = progress["current"], progress["total"]
    for key in ("ready", "started", "processed", "completed"):
        total[key] -= current[key]  # the counts before this validation run
        current[key] = 0
    for counts in (current, total):
        counts["ready"] += 1
        counts["started"] += 1
    progress["is_last_batch"] = False
