"""The import paths that modules had before the package was grouped into ``training/`` and ``experiments/``.

Code, YAML configs (``class_path: kasa_lightning.fsdp.AdapterWrapPolicy``) and checkpoints name classes by module
path: a checkpoint written by the CLI stores the LightningModule's as ``_class_path`` in its hyperparameters
(``kasa_lightning.module.KaSAModule``), and ``load_from_checkpoint`` imports it. So an old path still imports, as
the same module object as the new path, with a ``FutureWarning`` that names the new one. The list of moves is in
CHANGELOG.md.

Hand-written because the standard library has no module alias; a finder on ``sys.meta_path`` (installed by
``kasa_lightning/__init__``) is how ``import`` itself resolves a name it cannot find on disk.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module path -> new module path
MOVED: dict[str, str] = {
    "kasa_lightning.module": "kasa_lightning.training.module",
    "kasa_lightning.checkpointing": "kasa_lightning.training._checkpointing",
    "kasa_lightning.checkpoint_io": "kasa_lightning.training.checkpoint_io",
    "kasa_lightning.backbone": "kasa_lightning.training._backbone",
    "kasa_lightning.evaluation": "kasa_lightning.training._evaluation",
    "kasa_lightning.contracts": "kasa_lightning.training.contracts",
    "kasa_lightning.resume": "kasa_lightning.training._resume",
    "kasa_lightning.divergence": "kasa_lightning.training.divergence",
    "kasa_lightning.batching": "kasa_lightning.training._batching",
    "kasa_lightning.loggers": "kasa_lightning.training.loggers",
    "kasa_lightning.artifacts": "kasa_lightning.training.artifacts",
    "kasa_lightning.fsdp": "kasa_lightning.training.fsdp",
    "kasa_lightning.callbacks.stop": "kasa_lightning.training._stop",
    "kasa_lightning.sweep": "kasa_lightning.experiments.sweep",
    "kasa_lightning.sweep_spec": "kasa_lightning.experiments.sweep._spec",
    "kasa_lightning.sweep_plan": "kasa_lightning.experiments.sweep._plan",
    "kasa_lightning.sweep_exec": "kasa_lightning.experiments.sweep._exec",
    "kasa_lightning.sweep_protocol": "kasa_lightning.experiments.sweep._protocol",
    "kasa_lightning.report": "kasa_lightning.experiments.report",
    "kasa_lightning.report_aggregate": "kasa_lightning.experiments.report._aggregate",
    "kasa_lightning.report_output": "kasa_lightning.experiments.report._output",
    "kasa_lightning.paper_results": "kasa_lightning.experiments.paper.results",
    "kasa_lightning.paper_hyperparameters": "kasa_lightning.experiments.paper.hyperparameters",
    "kasa_lightning.stats": "kasa_lightning.experiments.stats",
    "kasa_lightning.kasa.state": "kasa_lightning.kasa.saving",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path (one module object under both names)."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}: update the import or class_path (the old path will be removed)",
            FutureWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the old name's spec on the shared module: put it back


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of ``MOVED``; every other name is left to the other finders."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(new)) if new is not None else None


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once), after the finders that look on disk."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def moved_class_path(class_path: str) -> str | None:
    """The current path of a class whose module moved (``kasa_lightning.module.KaSAModule`` ->
    ``kasa_lightning.training.module.KaSAModule``); None for any other path."""
    module, _, name = class_path.rpartition(".")
    new = MOVED.get(module)
    return f"{new}.{name}" if new is not None else None
