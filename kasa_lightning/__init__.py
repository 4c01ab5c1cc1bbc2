"""kasa-lightning: fine-tune language models with KaSA (arXiv 2412.06071) and the methods it is compared with.

The method itself is pure PyTorch and lives in ``kasa_lightning.kasa``; its public names are re-exported here.
The re-exports are lazy (PEP 562): ``import kasa_lightning.kasa`` or ``from kasa_lightning import apply_adapters``
does not import Lightning; ``KaSAModule`` imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kasa_lightning._lazy import lazy_exports

__version__ = "0.1.0"

_METHOD = [
    "AdaptedLayer",
    "AdapterConfig",
    "AdapterLossTerms",
    "adapted_layers",
    "adapter_config",
    "adapter_loss",
    "adapter_state_dict",
    "apply_adapters",
    "export_peft",
    "load_adapter",
    "load_adapter_state_dict",
    "merge_adapters",
    "merge_and_unload",
    "save_adapter",
    "unload_adapters",
    "unmerge_adapters",
]
__all__ = ["KaSAModule", "NonFiniteLossError", *_METHOD]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"KaSAModule": ".module", "NonFiniteLossError": ".module", **{name: ".kasa" for name in _METHOD}},
)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from kasa_lightning.kasa import *  # noqa: F403  (the names of _METHOD, listed once above)
    from kasa_lightning.module import KaSAModule, NonFiniteLossError
