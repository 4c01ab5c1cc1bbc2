"""Short class names on the command line: ``--data.help GLUEDataModule``, ``--data TextClassificationDataModule``,
``--trainer.callbacks+=RegularizerMonitor``.

jsonargparse resolves a name without dots by walking the ``__subclasses__()`` of the argument's type, which lists
only classes that have been imported. ``kasa_lightning.datamodules`` exports its classes lazily (so that importing
one does not import them all), so before parsing nothing but ``BaseDataModule`` is known and a short name fails
with "Expected a dot import path". :func:`import_shipped_classes` imports every shipped DataModule (the callbacks
package imports its classes eagerly), after which the short names resolve and ``--help`` lists them as known
subclasses.
"""

from __future__ import annotations

import importlib


def import_shipped_classes() -> list[type]:
    """Import the DataModule and callback classes of ``kasa_lightning.datamodules`` / ``.callbacks``."""
    classes = []
    for package in ("kasa_lightning.datamodules", "kasa_lightning.callbacks"):
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type):
                classes.append(value)
    return classes
