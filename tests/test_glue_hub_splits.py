"""GLUE from the Hub: ``validate``/``test`` download only the validation split(s), never the training split.

The Hub dataset is a local folder laid out like ``nyu-mll/glue`` (one parquet file per split under ``<task>/`` and a
README declaring the configurations and their split files), which ``datasets`` reads with the same metadata code as
a Hub repository. Its training file is not parquet at all, so reading it would fail; ``datasets.load_dataset`` is
wrapped to record which splits each call asks for.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from lightning_helpers import MINILM

from kasa_lightning.datamodules import GLUEDataModule

README = """---
configs:
- config_name: rte
  data_files:
  - split: train
    path: rte/train-*
  - split: validation
    path: rte/validation-*
  - split: test
    path: rte/test-*
- config_name: mnli
  data_files:
  - split: train
    path: mnli/train-*
  - split: validation_matched
    path: mnli/validation_matched-*
  - split: validation_mismatched
    path: mnli/validation_mismatched-*
---
"""


def _hub_folder(root: Path, train_readable: bool) -> Path:
    rows = {"rte": ("sentence1", "sentence2", 2), "mnli": ("premise", "hypothesis", 3)}
    splits = {"rte": ("train", "validation", "test"), "mnli": ("train", "validation_matched", "validation_mismatched")}
    for config, (a, b, labels) in rows.items():
        (root / config).mkdir(parents=True)
        for i, split in enumerate(splits[config]):
            n = 4 + i
            data = {a: [f"{split} a {k}" for k in range(n)], b: [f"{split} b {k}" for k in range(n)]}
            data["label"] = [-1 if split == "test" else k % labels for k in range(n)]
            data["idx"] = list(range(n))
            path = root / config / f"{split}-00000-of-00001.parquet"
            if split == "train" and not train_readable:
                path.write_bytes(b"not a parquet file: reading it fails")
            else:
                datasets.Dataset.from_dict(data).to_parquet(str(path))
    (root / "README.md").write_text(README)
    return root


@pytest.fixture
def requested(monkeypatch) -> list[tuple[str, ...]]:
    """The splits each ``datasets.load_dataset`` call asks for (``("*",)``: every split of the configuration)."""
    calls: list[tuple[str, ...]] = []
    real = datasets.load_dataset

    def counting(path, name=None, *args, data_files=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(tuple(sorted(data_files)) if isinstance(data_files, dict) else ("*",))
        return real(path, name, *args, data_files=data_files, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", counting)
    return calls


def _data(hub: Path, task: str = "rte") -> GLUEDataModule:
    return GLUEDataModule(task=task, hub_name=str(hub), tokenizer=MINILM, batch_size=2, max_length=32)


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_downloads_only_the_validation_split(tmp_path, requested, stage):
    data = _data(_hub_folder(tmp_path / "glue", train_readable=False))
    data.setup(stage)
    assert requested == [("validation",)]
    assert data.train_set is None and len(data.val_set) == 5


def test_mnli_evaluation_downloads_both_validation_splits_only(tmp_path, requested):
    data = _data(_hub_folder(tmp_path / "glue", train_readable=False), task="mnli")
    data.setup("validate")
    assert requested == [("validation_matched", "validation_mismatched")]
    assert [len(v) for v in data.val_sets] == [5, 6]


def test_fit_downloads_train_and_validation_not_test(tmp_path, requested):
    data = _data(_hub_folder(tmp_path / "glue", train_readable=True))
    data.setup("fit")
    assert requested == [("train", "validation")]
    assert len(data.train_set) == 4 and len(data.val_set) == 5
    # the unreadable training file is read when fit needs it: the evaluation tests above really skipped it
    with pytest.raises(Exception, match="(?i)parquet"):
        _data(_hub_folder(tmp_path / "broken", train_readable=False)).setup("fit")


def test_a_dataset_without_the_split_is_refused_naming_it(tmp_path, requested):
    hub = _hub_folder(tmp_path / "glue", train_readable=True)
    (hub / "README.md").write_text(README.replace("  - split: validation\n    path: rte/validation-*\n", ""))
    with pytest.raises(ValueError, match=r"glue/rte has no split \['validation'\] \(it has \['test', 'train'\]\)"):
        _data(hub).setup("validate")
    assert requested == [("*",)]  # no split-to-files entry for it: the configuration is loaded whole, then refused
