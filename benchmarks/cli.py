"""The command-line options every benchmark shares, and the default device."""

from __future__ import annotations

from typing import Any

import torch


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
