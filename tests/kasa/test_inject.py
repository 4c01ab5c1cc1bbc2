"""Bad input gets a clear error naming the setting, before any weight changes."""

import copy

import pytest
import torch
from conftest import make_tiny_bert

from kasa_lightning import AdapterConfig, apply_adapters


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "dora"}, "AdapterConfig.method"),
        ({"r": 0}, "AdapterConfig.r"),
        ({"alpha": -1.0}, "AdapterConfig.alpha"),
        ({"beta": -1e-3}, "AdapterConfig.beta"),
        ({"gamma": -1.0}, "AdapterConfig.gamma"),
        ({"dropout": 1.0}, "AdapterConfig.dropout"),
        ({"target_modules": []}, "AdapterConfig.target_modules"),
        ({"reg_form": "big"}, "AdapterConfig.reg_form"),
        ({"truncation_mode": "x"}, "AdapterConfig.truncation_mode"),
        ({"method": "pissa", "truncate": True}, "AdapterConfig.truncate"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kwargs)


def _unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_rank_too_large_names_layer_and_shape():
    model = make_tiny_bert()
    model.bert.encoder.layer[1].attention.self.value = torch.nn.Linear(32, 6)  # a narrow layer
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"bert.encoder.layer.1.attention.self.value.*out=6, in=32"):
        apply_adapters(model, AdapterConfig(r=8))
    _unchanged(model, before)  # layer 0 was valid but must not have been truncated


def test_no_match_lists_candidates():
    with pytest.raises(ValueError, match=r"matched no layer.*'query'.*'value'"):
        apply_adapters(make_tiny_bert(), AdapterConfig(target_modules=["q_proj"]))


def test_unsupported_module_type():
    with pytest.raises(TypeError, match="word_embeddings.*Embedding"):
        apply_adapters(make_tiny_bert(), AdapterConfig(target_modules=["word_embeddings"]))


def test_applying_twice():
    model = apply_adapters(make_tiny_bert(), AdapterConfig(r=2))
    with pytest.raises(RuntimeError, match="already has adapters"):
        apply_adapters(model, AdapterConfig(r=2))


def test_integer_weight_in_fold_mode():
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(8, 8)})
    model["proj"].weight = torch.nn.Parameter(torch.ones(8, 8, dtype=torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match="truncation_mode='lowrank'"):
        apply_adapters(model, AdapterConfig(r=2, target_modules=["proj"]))


def test_regex_targets():
    model = apply_adapters(
        make_tiny_bert(), AdapterConfig(r=2, target_modules=[r".*layer\.1\.attention\.self\.(query|key)"])
    )
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {
        f"bert.encoder.layer.1.attention.self.{t}.{p}"
        for t in ("query", "key")
        for p in ("delta_u", "delta_sigma", "delta_v")
    }
