"""kasa-lightning: fine-tune language models with KaSA (arXiv 2412.06071) and the methods it is compared with.

The method itself is pure PyTorch and lives in ``kasa_lightning.kasa``; its public names are re-exported here.
``KaSAModule`` (the Lightning glue) is exported lazily (PEP 562): ``import kasa_lightning`` and
``from kasa_lightning import apply_adapters`` do not import Lightning; ``KaSAModule`` imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kasa_lightning._lazy import lazy_exports
from kasa_lightning._moved import install as _install_moved_paths
from kasa_lightning.kasa import *  # noqa: F403  (the method: pure PyTorch)
from kasa_lightning.kasa import __all__ as _METHOD

__version__ = "0.1.0"

_install_moved_paths()  # the module paths from before training/ and experiments/ (kasa_lightning.module, ...)

__all__ = ["KaSAModule", "NonFiniteLossError", *_METHOD]

__getattr__, __dir__ = lazy_exports(
    __name__, {"KaSAModule": ".training.module", "NonFiniteLossError": ".training.divergence"}
)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from kasa_lightning.training.divergence import NonFiniteLossError
    from kasa_lightning.training.module import KaSAModule
