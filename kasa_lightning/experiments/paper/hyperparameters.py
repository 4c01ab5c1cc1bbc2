"""The paper's hyperparameter Tables 6-10 as data (``paper_hyperparameters.json`` beside this module), and the
named deviations of the shipped configs from them.

    >>> from kasa_lightning.experiments.paper.hyperparameters import paper_hyperparameters
    >>> paper_hyperparameters()["commonsense/llama2-7b"].settings["beta"]
    0.01

Keys of ``experiments`` are config paths under ``configs/`` without ``.yaml`` (GLUE, E2E, commonsense) or the
model folder (instruction following: ``instruct/<model>`` covers its five configs). A setting whose value is
``None`` is not given by the table (e.g. the rank, lost from our copy of the text). ``tests/test_paper_configs.py``
compares every shipped config with these values; a difference must be listed in ``deviations`` with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

Value = int | float | str | list | None


@dataclass(frozen=True)
class PaperSettings:
    """One column of a hyperparameter table: ``table`` (e.g. ``"Table 6"``) and ``settings`` (name -> value;
    the names are described in ``setting_descriptions()``)."""

    experiment: str
    table: str
    settings: dict[str, Value]

    def stated(self) -> dict[str, Value]:
        """The settings the table gives a value for (``None`` left out)."""
        return {k: v for k, v in self.settings.items() if v is not None}


@dataclass(frozen=True)
class Deviation:
    """A shipped config that keeps ``config_value`` where the table prints ``paper``, with the reason and the
    overlay (under ``configs/``) that restores the table's value."""

    config: str
    setting: str
    paper: Value
    config_value: Value
    reason: str
    overlay: str | None = None


@lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    text = resources.files("kasa_lightning.experiments.paper").joinpath("paper_hyperparameters.json").read_text()
    return json.loads(text)


def paper_hyperparameters() -> dict[str, PaperSettings]:
    """Experiment key -> the table's settings, e.g. ``"glue/roberta-base/rte"``, ``"instruct/gemma-7b"``."""
    return {
        key: PaperSettings(experiment=key, table=entry["table"], settings=dict(entry["settings"]))
        for key, entry in _raw()["experiments"].items()
    }


def deviations() -> list[Deviation]:
    """The named deviations of the shipped configs from the tables."""
    return [Deviation(**entry) for entry in _raw()["deviations"]]


def setting_descriptions() -> dict[str, str]:
    """Setting name -> what it means (e.g. ``batch_size``: the effective batch over all devices)."""
    return dict(_raw()["settings"])


def experiment_for(config: str) -> PaperSettings:
    """The table column a config under ``configs/`` follows (``"glue/roberta-base/rte.yaml"``,
    ``"instruct/gemma-7b/coding.yaml"``); ``KeyError`` naming the known experiments if none."""
    key = config.removesuffix(".yaml")
    table = paper_hyperparameters()
    if key.startswith("instruct/"):
        key = "/".join(key.split("/")[:2])
    if key not in table:
        raise KeyError(f"no paper hyperparameters for config {config!r}; known: {sorted(table)}")
    return table[key]
