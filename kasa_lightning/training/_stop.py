"""`StopCheckpoint`: a resumable checkpoint of the step where training stopped, whatever stopped it.

``KaSAModule.configure_callbacks`` installs it in every fit; nothing needs to be configured.

* End of fit (``max_steps``, ``max_epochs``, early stopping): Lightning 2.6 writes ``last.ckpt`` only at a step where
  a top-k checkpoint was written as well. With ``monitor`` set, a run stopped by ``max_steps`` mid-epoch, or whose
  last epochs did not improve the metric, kept a ``last.ckpt`` of an earlier step. This callback writes
  ``last.ckpt`` of the final step (through the ``ModelCheckpoint`` itself, so its bookkeeping stays right).
* End of every training epoch: ``last.ckpt`` of that step too, so a crash (kill -9) after an epoch that did not
  improve the monitored metric resumes after that epoch instead of training it again. It has to come after the
  ``ModelCheckpoint``'s own epoch-end work (which runs after every other callback and after the module's
  ``on_train_epoch_end``, and skips its top-k save at a step where a checkpoint was already written), so each
  ``ModelCheckpoint`` with ``save_last`` gets its ``on_train_epoch_end`` followed by that save for the length of
  the fit (an instance attribute, removed at the end of training).
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
* Ctrl-C (SIGINT) during training is handled like SIGTERM (Lightning's own handling raised ``KeyboardInterrupt``
  wherever the step was, kept the last epoch-end checkpoint and exited with status 1): the first Ctrl-C asks the
  loop to stop after the current batch, ``last.ckpt`` of that step is written and the exit status is 130
  (128 + SIGINT). A second Ctrl-C interrupts at once, as before. Installed from ``on_train_start`` to the end of
  fit, in the main thread, and only where Python's default SIGINT handler is in place.
* Several processes (DDP, FSDP, several nodes): a signal to any process, or to all of them as a scheduler sends
  it, stops every rank at the same batch (``_rank_signals.RankAgreedStop``: Lightning's own handler runs a
  collective inside the signal handler and hangs when every process is signalled).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loops.progress import _StartedTracker
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kasa_lightning.training._rank_signals import RankAgreedStop

SIGTERM_EXIT_STATUS = 143  # 128 + signal 15, what a shell reports for a process ended by SIGTERM
SIGINT_EXIT_STATUS = 130  # 128 + signal 2, what a shell reports for a process ended by Ctrl-C


class StopCheckpoint(L.Callback):
    """Writes ``last.ckpt`` at the end of every training epoch, of the final step at the end of fit, and on SIGTERM
    (then exits with status 143) or Ctrl-C (status 130)."""

    def __init__(self) -> None:
        self.interrupted = False  # a Ctrl-C asked the run to stop
        self._previous: object = None  # the SIGINT handler to put back
        self._wrapped: list[ModelCheckpoint] = []  # callbacks whose on_train_epoch_end is followed by a last save
        self._in_validation = False  # SIGTERM arrived during fit's validation (set while saving)
        self._validation_restarted = False  # this run resumes a checkpoint saved during a validation
        self._ranks = RankAgreedStop()  # under several processes: every rank stops at the same batch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_restarted:  # Lightning has read the restart stage: undo the marker's extra batch
            total = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total
            assert isinstance(total, _StartedTracker)  # Lightning's batch progress counts started batches
            total.ready, total.started = total.completed, total.completed
            self._validation_restarted = False
        for callback in _last_savers(trainer):
            if "on_train_epoch_end" not in vars(callback):
                callback.on_train_epoch_end = _then_save_last(callback)  # type: ignore[method-assign,assignment]
                self._wrapped.append(callback)
        # after Lightning registered its own handlers (it restores what it found there when it tears down)
        self._ranks.install(trainer)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.interrupted = False
            self._previous = signal.signal(signal.SIGINT, lambda signum, frame: self._on_sigint(trainer, frame))

    def _on_sigint(self, trainer: L.Trainer, frame: FrameType | None) -> None:
        if self.interrupted:  # the second Ctrl-C: stop now, the way Python does
            self._restore()
            raise KeyboardInterrupt
        self.interrupted = True
        self._ranks.request(trainer)  # the loops stop after the current batch (every rank at the same one)
        if trainer.is_global_zero:
            print("\nCtrl-C: stopping after the current batch to save it (Ctrl-C again to abort)", file=sys.stderr)

    @property
    def stop_requested(self) -> bool:
        """This process got SIGTERM or Ctrl-C during training (under several processes: not yet agreed on)."""
        return self._ranks.pending or self.interrupted

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._ranks.agree(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._ranks.agree(trainer)

    def _restore(self) -> None:
        self._ranks.uninstall()
        for callback in self._wrapped:
            vars(callback).pop("on_train_epoch_end", None)
        self._wrapped = []
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
        self._previous = None

    def state_dict(self) -> dict[str, Any]:
        return {"validation_interrupted": self._in_validation}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validation_restarted = bool(state_dict.get("validation_interrupted", False))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._in_validation:
            _mark_validation_unfinished(checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        for callback in _last_savers(trainer):
            _save_last(trainer, callback)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        what, status = ("Ctrl-C (SIGINT)", SIGINT_EXIT_STATUS) if self.interrupted else ("SIGTERM", SIGTERM_EXIT_STATUS)
        exception.code = status
        self._ranks.release_launched_ranks(trainer)
        if trainer.global_step == 0 or trainer.sanity_checking:
            print(
                f"{what} before the first optimiser step: nothing to save; exiting with status {status}",
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
                f"{what} at global step {trainer.global_step}{during}: saved {', '.join(paths)}; exiting with "
                f"status {status}. Resume with: fit ... --ckpt_path {paths[0]}",
                file=sys.stderr,
                flush=True,
            )


def _then_save_last(callback: ModelCheckpoint) -> Callable[[L.Trainer, L.LightningModule], None]:
    """``callback.on_train_epoch_end``, then its ``last.ckpt`` of this step (unless a stop signal is pending: the
    stop then saves this step itself)."""
    original = callback.on_train_epoch_end

    def on_train_epoch_end(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        original(trainer, pl_module)
        if not trainer.received_sigterm:
            _save_last(trainer, callback)

    return on_train_epoch_end


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
