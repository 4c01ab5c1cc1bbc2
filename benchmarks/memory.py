"""Peak memory of one optimizer step: persistent bytes (parameters, buffers, optimizer state) plus the transient
peak on top of them, from torch's CPU allocator events (torch.profiler) or ``torch.cuda.max_memory_allocated``;
why neither ``tracemalloc`` nor RSS can tell the variants apart is in ``benchmarks/train_step.py``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.machine import silent_stderr


def persistent_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the distinct storages of parameters, buffers, grads and optimizer state."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    for state in opt.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    storages = {}
    for t in tensors:
        st = t.untyped_storage()
        storages[(str(st.device), st.data_ptr())] = st.nbytes()
    return sum(storages.values())


def cpu_transient_peak(fn: Callable[[], None]) -> int:
    """Highest number of bytes the CPU allocator held on top of its state at the start, while ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with silent_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted(
        (e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0),
        key=lambda e: e["ts"],
    )
    if not mem:
        return 0
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in mem) - start)


def cuda_transient_peak(fn: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def measure_memory(model: nn.Module, opt: torch.optim.Optimizer, step: Callable[[], None], device: str) -> dict:
    opt.zero_grad(set_to_none=True)
    persistent = persistent_bytes(model, opt)
    transient = (cuda_transient_peak if device.startswith("cuda") else cpu_transient_peak)(step)
    return {"persistent_bytes": persistent, "transient_bytes": transient, "peak_bytes": persistent + transient}
