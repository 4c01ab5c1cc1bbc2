"""A result file: machine, date and command first (``write_json``), then the results, with the headline numbers
in a top-level ``ratios`` object that ``check_ratios`` validates."""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from benchmarks.machine import machine_info


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


def check_ratios(ratios: Mapping[str, float], required: Sequence[str]) -> list[str]:
    """Problems with ``ratios``: required keys missing, values not finite and positive (empty list: all good)."""
    problems = [f"missing ratio {k!r}" for k in required if k not in ratios]
    problems += [
        f"ratio {k!r} = {v!r} is not finite and positive"
        for k, v in ratios.items()
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)
    ]
    return problems
