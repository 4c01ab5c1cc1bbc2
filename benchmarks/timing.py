"""Timing blocks: a block of calls per variant, interleaved over repeats in a rotating order (``interleave``),
so that no variant always runs first or last on a machine whose speed drifts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


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
