"""Markdown tables and number formats for the benchmark reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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
