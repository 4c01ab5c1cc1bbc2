"""Loading a pretrained backbone: the new classification head gets one line of ours and no transformers table; a base
weight that is really missing still gets the table and a warning naming it."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from kasa_lightning.training._backbone import build_backbone

QUERY = "encoder.layer.0.attention.self.query.weight"


def _save_tiny_bert_base(path):
    """A pretrained-style checkpoint: the base model only (no classification head), as on the Hub."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture
def shown():
    """Everything logged to transformers' loading logger and to Lightning's (where our line goes), as the text the
    handlers there print."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger("transformers.modeling_utils"), logging.getLogger("lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(handler)
    yield lambda: "\n".join(record.getMessage() for record in records)
    for logger in loggers:
        logger.removeHandler(handler)


def test_new_head_is_one_line_and_no_table(tmp_path, shown):
    path = _save_tiny_bert_base(tmp_path / "bert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        model = build_backbone(str(path), "classification", 3)
    err = shown()
    assert "LOAD REPORT" not in err and "MISSING" not in err
    ours = "classifier.bias, classifier.weight: new classification head, initialised randomly (expected)"
    assert ours in err
    assert model.classifier.out_features == 3


def test_missing_base_weight_is_reported_with_table_and_warning(tmp_path, shown):
    path = _save_tiny_bert_base(tmp_path / "bert")
    weights = load_file(path / "model.safetensors")
    assert QUERY in weights
    del weights[QUERY]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=rf"model\.backbone=.*missing from the checkpoint.*bert\.{QUERY}") as caught:
        build_backbone(str(path), "classification", 3)
    assert "classifier" not in str(caught[0].message)  # the head is not among the problems
    err = shown()
    assert "LOAD REPORT" in err and QUERY in err  # transformers' own table, as it would have printed it
    assert "new classification head, initialised randomly (expected)" in err


def test_causal_lm_missing_head_is_not_expected(tmp_path, shown):
    """For a language model nothing outside the base is new by design: a missing ``lm_head`` is a problem."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.save_pretrained(tmp_path / "gpt2")
    weights = load_file(tmp_path / "gpt2" / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tmp_path / "gpt2" / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"missing from the checkpoint.*lm_head\.weight"):
        build_backbone(str(tmp_path / "gpt2"), "causal_lm", 2)
    assert "LOAD REPORT" in shown()


def test_pretraining_head_of_the_checkpoint_is_one_line(tmp_path, shown):
    """A pretraining checkpoint (as ``bert-base-uncased``) loaded for classification: its ``cls.*`` heads are not
    used, which is expected; the pooler is in it, so no base weight is missing."""
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
    BertForPreTraining(cfg).save_pretrained(tmp_path / "mlm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone(str(tmp_path / "mlm"), "classification", 2)
    out = shown()
    assert "LOAD REPORT" not in out
    assert re.search(r"cls\.predictions\.\S+.*: the checkpoint's head for another task, not used \(expected\)", out)
    assert "cls.seq_relationship.weight" in out and "new classification head" in out


def test_shape_mismatch_shows_the_table_before_the_error(tmp_path, shown):
    from transformers import AutoModelForSequenceClassification

    from kasa_lightning.training._load_report import from_pretrained_reported

    path = _save_tiny_bert_base(tmp_path / "bert")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        from_pretrained_reported(
            AutoModelForSequenceClassification, str(path), "classification", "model.backbone", vocab_size=80
        )
    out = shown()
    assert "LOAD REPORT" in out and "MISMATCH" in out and "word_embeddings" in out
