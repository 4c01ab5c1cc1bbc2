"""A stop signal (SIGTERM, Ctrl-C) that every rank of a multi-process run acts on at the same batch.

Lightning 2.6's SIGTERM handler runs a ``dist.broadcast`` inside the signal handler and sets the rank's own
``trainer.received_sigterm``, which the loops read locally after each batch. That holds only when rank 0 alone is
signalled and forwards the signal to the ranks it launched. A scheduler signals every process of the job (Slurm's
time limit and ``scancel`` do; torchrun and Slurm tasks have no forwarding launcher at all), and then:

* a rank that gets the signal twice (its own, then rank 0's forward) runs the handler's broadcast twice, against
  rank 0's once: the ranks hang in the collective until its timeout and exit with status 1, nothing saved;
* a rank whose signal comes while it waits inside a collective runs the handler's broadcast against the other
  ranks' next collective (a mismatch);
* a rank whose flag is set raises at the end of its batch while the others start the next one, and the
  checkpoint's collectives then meet other ranks' training collectives.

Here, for the length of training and only with more than one process, the SIGTERM handler does no collective: it
records the signal in this process (and forwards it once to the ranks this process launched, as Lightning does,
so a signal to the launcher alone still stops them). After every training and validation batch every rank
all-reduces that record (a one-element CPU tensor over a gloo group: no device synchronisation), and when any rank
has it, every rank sets ``trainer.received_sigterm`` at that same batch, where Lightning's loops then stop all of
them together.

After such a stop every rank exits with the stop's status (143 or 130). Lightning's launcher watches the ranks it
started every 5 s and, seeing one that ended with a non-zero status, kills every rank and itself with SIGKILL; a
launcher whose own exit took longer than its ranks' was killed that way (status -9 instead of 143, after its
checkpoint was written). ``release_launched_ranks`` ends that watch once all ranks have saved the stop's step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning as L
import torch

Handler = Callable[[int, FrameType | None], Any] | int | None


class RankAgreedStop:
    """Records stop signals per process and turns them into one stop of every rank at the same batch."""

    def __init__(self) -> None:
        self.pending = False  # this process got a stop signal that the ranks have not agreed on yet
        self._forwarded = False
        self._previous: Handler = None  # the SIGTERM handler to put back (Lightning's)
        self._group: Any = None  # the gloo process group of the all-reduce

    @staticmethod
    def applies(trainer: L.Trainer) -> bool:
        return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def install(self, trainer: L.Trainer) -> None:
        """Replace the SIGTERM handler for training (every rank calls this at the same point: it may create the
        gloo group, a collective)."""
        self.pending, self._forwarded = False, False
        if not self.applies(trainer):
            return
        dist = torch.distributed
        if self._group is None:
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():
            original = trainer._signal_connector._original_handlers.get(signal.SIGTERM)

            def on_sigterm(signum: int, frame: FrameType | None) -> None:
                self.request(trainer)
                if callable(original):  # a handler that was there before Lightning's (Lightning calls it too)
                    original(signum, frame)  # type: ignore[arg-type]

            self._previous = signal.signal(signal.SIGTERM, on_sigterm)

    def request(self, trainer: L.Trainer) -> None:
        """A stop signal arrived in this process (signal-handler safe: no collective)."""
        if not self.applies(trainer):
            trainer._signal_connector.received_sigterm = True  # one process: the loops read it directly
            return
        self.pending = True
        launcher = trainer.strategy.launcher
        if not self._forwarded and launcher is not None and getattr(launcher, "procs", None):
            self._forwarded = True
            launcher.kill(signal.SIGTERM)  # the ranks this process started, as Lightning does

    def agree(self, trainer: L.Trainer) -> None:
        """Every rank, at the same batch: stop all of them when any rank got a signal."""
        if not self.applies(trainer) or trainer.received_sigterm:
            return
        flag = torch.tensor([1 if self.pending else 0], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        if flag.item():
            trainer._signal_connector.received_sigterm = True

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
        self._previous = None

    def release_launched_ranks(self, trainer: L.Trainer) -> None:
        """After an agreed stop was saved: stop the launcher's watch over the ranks it started (they end with the
        stop's non-zero status by design). Every rank leaves through the same stop, so none is left behind."""
        launcher = trainer.strategy.launcher
        if not getattr(launcher, "procs", None):
            return
        for thread in threading.enumerate():
            # lightning.fabric.strategies.launchers.subprocess_script._ChildProcessObserver: its loop ends when
            # _run() returns True
            if thread.name == "child-process-observer" and hasattr(thread, "_run"):
                thread._run = lambda: True  # type: ignore[attr-defined]
