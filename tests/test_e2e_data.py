"""E2EDataModule on the official E2E csv files in ../shared/data (skipped without them)."""

import lightning as L
import pytest
from conftest import SHARED_DATA
from lightning_helpers import MINILM, trainer

from kasa_lightning import AdapterConfig, KaSAModule
from kasa_lightning.datamodules.e2e import PAPER_GENERATION, E2EDataModule

E2E = SHARED_DATA / "e2e"
needs_e2e = pytest.mark.skipif(not E2E.is_dir(), reason="../shared/data/e2e is absent")
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 30522, "n_positions": 256, "n_embd": 32, "n_layer": 2, "n_head": 4}


def _dm(**kwargs):
    kwargs.setdefault("train_path", str(E2E / "devset.csv"))
    kwargs.setdefault("val_path", str(E2E / "testset_w_refs.csv"))
    kwargs.setdefault("test_path", str(E2E / "testset_w_refs.csv"))
    kwargs.setdefault("tokenizer", MINILM)
    kwargs.setdefault("max_length", 160)
    return E2EDataModule(**kwargs)


@needs_e2e
def test_loads_pairs_groups_references_and_masks_the_prompt():
    dm = _dm()
    dm.setup("fit")
    assert len(dm.train_set) + dm.stats["dropped"] == 4672  # one row per (MR, reference)
    assert len(dm.val_set) == 630  # one row per distinct MR of the test set
    assert sum(len(r["targets"]) for r in dm.val_set) == 4693  # all references kept
    tok = dm.tokenizer
    pairs = dm.load_pairs("train")
    for row, (mr, ref) in zip(dm.train_set.select(range(50)), pairs[:50]):
        target = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert target == [i for i in row["labels"] if i != -100]
        assert tok.decode(target, skip_special_tokens=True) == tok.decode(
            tok(" " + ref, add_special_tokens=False)["input_ids"]
        )
        prompt = [i for i, label in zip(row["input_ids"], row["labels"]) if label == -100]
        assert tok.decode(prompt, skip_special_tokens=True) == tok.decode(
            tok(mr + " ||")["input_ids"], skip_special_tokens=True
        )
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    evalb = next(iter(dm.val_dataloader()))
    assert (evalb["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the right edge
    assert len(evalb["targets"]) == evalb["input_ids"].shape[0] and all(isinstance(t, list) for t in evalb["targets"])
    assert dm.generation_kwargs == PAPER_GENERATION


@needs_e2e
def test_overlong_examples_are_dropped_and_counted():
    dm = _dm(max_length=40, overlength="drop")
    dm.setup("fit")
    assert dm.stats["dropped"] > 0
    assert len(dm.train_set) == 4672 - dm.stats["dropped"]
    assert max(len(r["input_ids"]) for r in dm.train_set) <= 40
    again = _dm(max_length=40, overlength="drop")  # datasets.map cache hit: the counts must not change
    again.setup("fit")
    assert again.stats["dropped"] == dm.stats["dropped"] and len(again.train_set) == len(dm.train_set)


def test_missing_columns_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("meaning,text\nname[x],y\n")
    with pytest.raises(ValueError, match="no MR column"):
        _dm(train_path=str(bad)).load_pairs("train")
    mr_only = tmp_path / "testset.csv"
    mr_only.write_text("MR\nname[x]\n")
    with pytest.raises(ValueError, match="no reference column.*predict"):
        _dm(train_path=str(mr_only)).load_pairs("train")


@needs_e2e
def test_fit_and_test_with_generation_on_a_tiny_gpt2(tmp_path):
    L.seed_everything(0)
    dm = _dm(
        max_eval_mrs=4,
        eval_batch_size=4,
        generation={"num_beams": 2, "max_new_tokens": 8},
        metrics=("BLEU", "NIST", "ROUGE_L", "CIDEr"),
    )
    module = KaSAModule(
        backbone=MINILM,
        backbone_config=TINY_GPT2,
        task="causal_lm",
        adapter=AdapterConfig(r=4, target_modules=["c_attn"]),
    )
    t = trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=2)
    t.fit(module, dm)
    assert {"val/BLEU", "val/NIST", "val/ROUGE_L", "val/CIDEr", "val/BLEU_best"} <= set(t.callback_metrics)
    t.test(module, dm)
    assert 0.0 <= float(t.callback_metrics["test/BLEU"]) <= 1.0
    preds = t.predict(module, dm)
    assert len(preds[0]) == 4 and {"index", "mr", "output"} <= set(preds[0][0])
