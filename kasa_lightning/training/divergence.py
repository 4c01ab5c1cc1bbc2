"""Diverged training: a non-finite loss found without a host-device sync per step, and checkpoints refused when
their adapter tensors are non-finite or exploded.

`FiniteWatch` keeps, on the loss's device, a flag "some step since the start had a non-finite loss" and the
global step and (loss, task loss, L2, L3) of the first such step. Updating it is a few tiny device operations and
no ``.item()``: the host looks at the flag only at check points (``KaSAModule`` checks every
``trainer.log_every_n_steps`` training batches, before any checkpoint is written, and at the end of each training
epoch and of fit), so on a GPU the step loop never waits for the device because of this check.

`checkpoint_problem(state, bound)` names the tensors of a checkpoint's state dict that are non-finite or larger
than ``bound`` in absolute value (one reduction and one sync per checkpoint).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; no checkpoint of that step (or any later one) is written."""


class DivergedAdaptersError(NonFiniteLossError):
    """A checkpoint was refused: its adapter tensors are non-finite or beyond ``KaSAModule.max_checkpoint_abs``."""


_F32_MAX = float(torch.finfo(torch.float32).max)


def _overflows(x: float) -> bool:
    return not math.isfinite(x) or abs(x) > _F32_MAX


class FiniteWatch:
    """Device-side record of the first non-finite training loss (see the module doc)."""

    def __init__(self) -> None:
        self.flag: torch.Tensor | None = None  # () bool: a non-finite loss was seen
        self.step: torch.Tensor | None = None  # () int64: global step of the first one
        self.values: torch.Tensor | None = None  # (4,) float32: loss, task, L2, L3 of the first one
        self.unchecked = 0  # training batches since the host last looked

    def update(self, global_step: int, loss: torch.Tensor, task: Any, l2: Any, l3: Any) -> None:
        """Record this step's terms (no host-device sync)."""
        with torch.no_grad():
            device = loss.device
            values = torch.stack(
                [torch.as_tensor(t, device=device).detach().float().reshape(()) for t in (loss, task, l2, l3)]
            )  # (4,)
            bad = ~torch.isfinite(values).all()
            if self.flag is None or self.flag.device != device:
                self.flag = torch.zeros((), dtype=torch.bool, device=device)
                self.step = torch.full((), -1, dtype=torch.int64, device=device)
                self.values = torch.zeros(4, device=device)
            assert self.step is not None and self.values is not None  # created with the flag
            first = bad & ~self.flag
            self.step = torch.where(first, torch.full((), global_step, dtype=torch.int64, device=device), self.step)
            self.values = torch.where(first, values, self.values)
            self.flag = self.flag | bad
        self.unchecked += 1

    def seen(self) -> bool:
        """Whether a non-finite loss was recorded (one host-device sync)."""
        self.unchecked = 0
        return self.flag is not None and bool(self.flag)

    def first(self) -> tuple[int, list[float]]:
        """(global step, [loss, task, L2, L3]) of the first non-finite loss (after ``seen()`` returned True)."""
        if self.step is None or self.values is None:
            raise RuntimeError("FiniteWatch.first() needs a recorded step: call it after seen() returned True")
        return int(self.step), self.values.tolist()


def blame(values: list[float], beta: float, gamma: float) -> tuple[str, str]:
    """(the term that blew up, a hint) for [loss, task, L2, L3] of a non-finite step."""
    loss, task, l2, l3 = values
    lr_hint = (
        "Try a lower learning rate, gradient clipping (trainer.gradient_clip_val), or bf16-mixed instead of 16-mixed."
    )
    if _overflows(task):
        return "task loss", f"The task loss itself is {task}: the model's outputs overflowed. {lr_hint}"
    if _overflows(l2):
        return "L2", (
            f"L2 = sum(dsigma^2) is {l2}: the learned singular values diverged. {lr_hint} "
            f"A larger beta (now {beta:g}) holds dsigma smaller."
        )
    if _overflows(l3):
        return "L3", (
            f"L3 (the orthogonality of dU, dV) is {l3}: the adapter matrices diverged. {lr_hint} "
            f"A larger gamma (now {gamma:g}) holds them closer to orthonormal."
        )
    if _overflows(beta * l2):
        return "beta * L2", (
            f"L2 = {l2:g} is finite but beta * L2 overflows float32: model.adapter.beta = "
            f"{beta:g} is far too large (the paper uses 1e-4 to 1e-1)."
        )
    if _overflows(gamma * l3):
        return "gamma * L3", (
            f"L3 = {l3:g} is finite but gamma * L3 overflows float32: model.adapter.gamma = "
            f"{gamma:g} is far too large (the paper uses 1e-4 to 1e-1)."
        )
    parts = {"task loss": abs(task), "beta * L2": abs(beta * l2), "gamma * L3": abs(gamma * l3)}
    worst = max(parts, key=lambda name: parts[name])
    return worst, f"Each term is finite but their sum ({loss}) is not; the largest is {worst}. {lr_hint}"


def checkpoint_problem(state: dict[str, Any], bound: float) -> str | None:
    """Which floating tensors of ``state`` are non-finite or have |value| > ``bound`` (None: all are fine)."""
    tensors = {
        k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 0
    }
    if not tensors:
        return None
    with torch.no_grad():
        peaks = torch.stack([v.detach().abs().amax().float().cpu() for v in tensors.values()])  # (n,)
        if bool((peaks <= bound).all()):  # NaN compares False: caught here too
            return None
        bad = [(k, p) for k, p in zip(tensors, peaks.tolist()) if not p <= bound]
    listed = ", ".join(f"{k} (max |x| = {p:.3g})" for k, p in bad[:4])
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    return f"{len(bad)} tensor(s) non-finite or beyond the bound {bound:g}: {listed}{more}"
