"""Test helpers for the run-folder tests (importable by subprocesses through PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch.profilers import PassThroughProfiler


class BarrierProfiler(PassThroughProfiler):
    """Holds every run at the moment the Trainer has chosen the run folder (``setup`` gets ``log_dir``, so the
    logger's version is decided) until ``parties`` runs got there: the widest form of the race between two runs
    started together. Writes ``<directory>/<pid>`` with the chosen folder; waits at most ``timeout`` seconds."""

    def __init__(self, directory: str, parties: int = 2, timeout: float = 120.0) -> None:
        super().__init__()
        self.directory, self.parties, self.timeout = Path(directory), parties, timeout

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / str(os.getpid())).write_text(str(log_dir))
        deadline = time.monotonic() + self.timeout
        while len(list(self.directory.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"BarrierProfiler: the other runs did not reach the barrier in {self.timeout} s")
            time.sleep(0.05)
