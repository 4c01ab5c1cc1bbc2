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
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGTERM_EXIT_STATUS = 143  # 128 + signal 15, what a shell reports for a process ended by SIGTERM


class StopCheckpoint(L.Callback):
    """Writes ``last.ckpt`` of the final step at the end of fit and on SIGTERM (then exits with status 143)."""

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
            print(
                f"SIGTERM at global step {trainer.global_step}: saved {', '.join(paths)}; exiting with status "
                f"{SIGTERM_EXIT_STATUS}. Resume with: fit ... --ckpt_path {paths[0]}",
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
