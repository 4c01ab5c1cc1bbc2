"""GLUEDataModule on the real GLUE files in ../shared/data (skipped without them) and on files made here."""

import math

import lightning as L
import pytest
import torch
from conftest import SHARED_DATA
from lightning_helpers import MINILM, TINY_BERT, trainer

from kasa_lightning import KaSAModule
from kasa_lightning.datamodules import GLUEDataModule
from kasa_lightning.datamodules.glue import read_glue_tsv

GLUE = SHARED_DATA / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason="../shared/data/glue is absent")


def _dm(task, **kwargs):
    kwargs.setdefault("tokenizer", MINILM)
    kwargs.setdefault("max_length", 128)
    return GLUEDataModule(task=task, **kwargs)


@needs_glue
@pytest.mark.parametrize(
    "task, kwargs, n_train, n_val, first_val_label",
    [
        ("cola", {}, 8551, 1043, 1),
        ("sst2", {"train_file": "train.from-test-labeled.tsv"}, 1821, 872, 1),
        ("mrpc", {}, 3668, 408, 1),
        ("rte", {}, 2490, 277, 1),  # "not_entailment" is label 1 on the Hub
        ("stsb", {}, 5749, 1500, 5.0),
    ],
)
def test_real_glue_files_load_with_hub_label_order(task, kwargs, n_train, n_val, first_val_label):
    dm = _dm(task, data_dir=str(GLUE), **kwargs)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (n_train, n_val)
    assert dm.val_set[0]["labels"] == pytest.approx(first_val_label)
    batch = next(iter(dm.train_dataloader()))
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (32, width) and width <= 128
    assert batch["labels"].shape == (32,)
    assert batch["labels"].dtype == (torch.float32 if task == "stsb" else torch.int64)
    assert (dm.task, dm.num_labels) == (("regression", 1) if task == "stsb" else ("classification", 2))


@needs_glue
def test_mrpc_is_read_with_quoting_off_and_without_bom():
    rows = read_glue_tsv(GLUE / "MRPC" / "dev.tsv", "mrpc")
    assert rows[0]["text_b"].startswith('"The foodservice pie business')  # an unbalanced quote, kept as text
    assert rows[0]["label"] == 1 and len(rows) == 408
    labels = {r["label"] for r in read_glue_tsv(GLUE / "RTE" / "train.tsv", "rte")}
    assert labels == {0, 1}


@needs_glue
def test_overlong_pairs_are_counted_and_dropped_or_truncated():
    cut = _dm("rte", data_dir=str(GLUE), max_length=64, overlength="truncate")
    cut.setup("fit")
    drop = _dm("rte", data_dir=str(GLUE), max_length=64, overlength="drop")
    drop.setup("fit")
    assert cut.stats["truncated"] > 0 and max(len(r) for r in cut.train_set["input_ids"]) == 64
    assert drop.stats["dropped"] == cut.stats["truncated"]
    assert len(drop.train_set) + len(drop.val_set) == 2490 + 277 - drop.stats["dropped"]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _mnli_dir(tmp_path, n=24):
    header = "index\tsentence1\tsentence2\tgold_label\n"
    labels = ["entailment", "neutral", "contradiction"]
    rows = "".join(
        f"{i}\ta man plays {'music' if i % 3 else 'chess'} number {i}\ta man plays\t{labels[i % 3]}\n" for i in range(n)
    )
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        _write(tmp_path / "MNLI" / name, header + rows)
    return tmp_path


def test_mnli_logs_matched_and_mismatched_and_best(tmp_path):
    L.seed_everything(0)
    dm = _dm("mnli", data_dir=str(_mnli_dir(tmp_path)), batch_size=8)
    module = KaSAModule(backbone=MINILM, backbone_config=TINY_BERT, num_labels=3)
    t = trainer(tmp_path / "run", max_epochs=2)
    t.fit(module, dm)
    metrics = t.callback_metrics
    for key in (
        "val/accuracy_matched",
        "val/accuracy_mismatched",
        "val/accuracy_average",
        "val/accuracy_matched_best",
        "val/loss_matched",
    ):
        assert key in metrics, (key, sorted(metrics))
    assert float(metrics["val/accuracy_matched_best"]) >= float(metrics["val/accuracy_matched"])
    assert dm.num_labels == 3


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not a GLUE task.*'rte'"):
        GLUEDataModule(task="RTE-x")
    _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"train.tsv:2: unknown label 'maybe'.*entailment"):
        read_glue_tsv(tmp_path / "RTE" / "train.tsv", "rte")
    _write(tmp_path / "QNLI" / "train.tsv", "index\tquestion\ttext\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(ValueError, match="column 'sentence' missing"):
        read_glue_tsv(tmp_path / "QNLI" / "train.tsv", "qnli")
    with pytest.raises(FileNotFoundError, match="SST-2"):
        _dm("sst2", data_dir=str(tmp_path)).setup("fit")
    _write(tmp_path / "STS-B" / "train.tsv", "sentence1\tsentence2\tscore\n")
    _write(tmp_path / "STS-B" / "dev.tsv", "sentence1\tsentence2\tscore\na\tb\t1.0\n")
    with pytest.raises(ValueError, match="train split is empty"):
        _dm("stsb", data_dir=str(tmp_path)).setup("fit")


def test_metric_definitions_against_hand_computed_values():
    dm = GLUEDataModule(task="cola")
    (mcc,) = dm.build_metrics("val").values()
    preds, labels = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert float(mcc(preds, labels)) == pytest.approx(expected)
    acc, f1 = GLUEDataModule(task="mrpc").build_metrics("val").values()
    assert float(acc(preds, labels)) == pytest.approx(4 / 6)
    assert float(f1(preds, labels)) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    pearson, spearman = GLUEDataModule(task="stsb").build_metrics("val").values()
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 5.0])
    assert float(spearman(x, y)) == pytest.approx(1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1)))
    xm, ym = x - x.mean(), y - y.mean()
    assert float(pearson(x, y)) == pytest.approx(float((xm * ym).sum() / (xm.norm() * ym.norm())), rel=1e-5)
