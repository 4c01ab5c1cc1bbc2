"""Lazy re-exports for package ``__init__`` files (PEP 562), so that importing a light part of the package
(``kasa_lightning.kasa``, ``kasa_lightning.datamodules.synthetic``) does not import Lightning.

Hand-written because the standard library has no helper for it; ``lazy_loader`` would be a dependency for
twenty lines.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package`` that import ``exports[name]`` (a module path,
    absolute or relative to ``package``) on first access of ``name`` and cache it in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
