"""Training with Lightning: ``KaSAModule`` (backbone + adapters + loss + optimiser) and its plumbing.

Public modules: ``module`` (``KaSAModule``), ``fsdp`` (``AdapterWrapPolicy``, the auto-wrap policy for FSDP),
``loggers`` (``AtomicTensorBoardLogger``), ``checkpoint_io`` (atomic writes, weights-only reads), ``divergence``
(``NonFiniteLossError``, ``DivergedAdaptersError``), ``contracts`` (what a DataModule may provide to the evaluation)
and ``artifacts`` (what the ``export`` command writes). Modules with a leading ``_`` are internal.

The names below are exported lazily (PEP 562): importing this package does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kasa_lightning._lazy import lazy_exports

_EXPORTS = {
    "KaSAModule": ".module",
    "AdapterWrapPolicy": ".fsdp",
    "AtomicTensorBoardLogger": ".loggers",
    "AtomicCheckpointIO": ".checkpoint_io",
    "load_checkpoint_safely": ".checkpoint_io",
    "NonFiniteLossError": ".divergence",
    "DivergedAdaptersError": ".divergence",
    "ProvidesMetrics": ".contracts",
    "NamesEvalLoaders": ".contracts",
    "GeneratesForEval": ".contracts",
    "FormatsPredictions": ".contracts",
    "export_module": ".artifacts",
}

__all__ = [
    "AdapterWrapPolicy",
    "AtomicCheckpointIO",
    "AtomicTensorBoardLogger",
    "DivergedAdaptersError",
    "FormatsPredictions",
    "GeneratesForEval",
    "KaSAModule",
    "NamesEvalLoaders",
    "NonFiniteLossError",
    "ProvidesMetrics",
    "export_module",
    "load_checkpoint_safely",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from kasa_lightning.training.artifacts import export_module
    from kasa_lightning.training.checkpoint_io import AtomicCheckpointIO, load_checkpoint_safely
    from kasa_lightning.training.contracts import (
        FormatsPredictions,
        GeneratesForEval,
        NamesEvalLoaders,
        ProvidesMetrics,
    )
    from kasa_lightning.training.divergence import DivergedAdaptersError, NonFiniteLossError
    from kasa_lightning.training.fsdp import AdapterWrapPolicy
    from kasa_lightning.training.loggers import AtomicTensorBoardLogger
    from kasa_lightning.training.module import KaSAModule
