"""Lightning DataModules of kasa-lightning, installed as ``kasa_lightning.datamodules``.

Import them as ``kasa_lightning.datamodules`` only, never as a bare ``datamodules`` package. The re-exports are
lazy (PEP 562), so ``kasa_lightning.datamodules.synthetic`` can be used without importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kasa_lightning._lazy import lazy_exports

_WHERE = {
    "BaseDataModule": ".base",
    "ResumableSampler": ".base",
    "CausalLMDataModule": ".causal",
    "CommonsenseDataModule": ".commonsense",
    "DataFileError": ".errors",
    "SentimentDemoDataModule": ".demo",
    "E2EDataModule": ".e2e",
    "GLUEDataModule": ".glue",
    "InstructionDataModule": ".instruct",
    "TextClassificationDataModule": ".text",
}
__all__ = [  # the keys of _WHERE, written out for tools that read __all__ statically
    "BaseDataModule",
    "CausalLMDataModule",
    "CommonsenseDataModule",
    "DataFileError",
    "E2EDataModule",
    "GLUEDataModule",
    "InstructionDataModule",
    "ResumableSampler",
    "SentimentDemoDataModule",
    "TextClassificationDataModule",
]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

if TYPE_CHECKING:
    from kasa_lightning.datamodules.base import BaseDataModule, ResumableSampler
    from kasa_lightning.datamodules.causal import CausalLMDataModule
    from kasa_lightning.datamodules.commonsense import CommonsenseDataModule
    from kasa_lightning.datamodules.demo import SentimentDemoDataModule
    from kasa_lightning.datamodules.e2e import E2EDataModule
    from kasa_lightning.datamodules.errors import DataFileError
    from kasa_lightning.datamodules.glue import GLUEDataModule
    from kasa_lightning.datamodules.instruct import InstructionDataModule
    from kasa_lightning.datamodules.text import TextClassificationDataModule
