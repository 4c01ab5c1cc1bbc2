"""``apply_adapters`` and the adapter record: each method's initialisation (what is removed from the base, how
dU, dsigma, dV start), what the record holds, and bad input refused with a clear error before any weight changes."""

import copy

import pytest
import torch
from conftest import make_tiny_bert

from kasa_lightning import (
    AdapterConfig,
    AdapterRecord,
    adapted_layers,
    adapter_record,
    adapter_state_dict,
    apply_adapters,
    merge_and_unload,
    unload_adapters,
)
from kasa_lightning.kasa.svd import extreme_triplets

IDS = torch.randint(0, 120, (3, 10), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


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
    assert names == {"adapter_bank.g0", "adapter_bank.g1"}  # the (32, 2) factors, the (2,) singular values
    assert [n for n, _ in adapted_layers(model)] == [
        f"bert.encoder.layer.1.attention.self.{t}" for t in ("query", "key")
    ]
    assert set(adapter_state_dict(model)) == {
        f"bert.encoder.layer.1.attention.self.{t}.{p}"
        for t in ("query", "key")
        for p in ("delta_u", "delta_sigma", "delta_v", "dropped_u", "dropped_v")
    }


def test_pissa_and_milora_start_from_the_original_model():
    for method, which in (("pissa", "principal"), ("milora", "minor")):
        model = make_tiny_bert()
        w0 = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
        base = _logits(model)
        apply_adapters(model, AdapterConfig(method=method, r=4))
        torch.testing.assert_close(_logits(model), base, atol=1e-5, rtol=1e-5)
        layer = model.bert.encoder.layer[0].attention.self.query
        t = extreme_triplets(w0, 4, which)
        # the residual base is W minus the chosen triplets' part
        torch.testing.assert_close(layer.base_layer.weight.double(), w0.double() - t.dropped(), atol=1e-6, rtol=0)


def test_init_variants_of_appendix_f6():
    model = make_tiny_bert()
    base = _logits(apply_adapters(copy.deepcopy(model), AdapterConfig(r=4)))
    m = apply_adapters(model, AdapterConfig(r=4, init_u="normal", init_v="normal", init_sigma="zeros"))
    layer = next(layer for _, layer in adapted_layers(m))
    assert torch.all(layer.delta_sigma == 0) and layer.delta_u.abs().sum() > 0
    torch.testing.assert_close(_logits(m), base, atol=1e-5, rtol=1e-5)  # sigma = 0: still a zero update
    m2 = apply_adapters(make_tiny_bert(), AdapterConfig(r=4, init_sigma="ones"))
    assert all(torch.all(layer.delta_sigma == 1) for _, layer in adapted_layers(m2))


def test_adapter_state_holds_the_config_saved_modules_and_trainability():
    model = make_tiny_bert()
    with pytest.raises(ValueError, match=r"no adapters: call apply_adapters\(model, config\) first"):
        adapter_record(model)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # a user's own freeze, to be restored
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    config = AdapterConfig(r=4, modules_to_save=["classifier"])
    apply_adapters(model, config)
    state = adapter_record(model)
    assert isinstance(state, AdapterRecord)
    assert state.config is config
    assert state.saved == ["classifier"]
    assert state.requires_grad == before and before["bert.embeddings.word_embeddings.weight"] is False
    unload_adapters(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    with pytest.raises(ValueError, match="no adapters"):  # the state goes with the adapters
        adapter_record(model)
    apply_adapters(model, AdapterConfig(r=2))
    assert adapter_record(model).saved == []
    merge_and_unload(model)
    with pytest.raises(ValueError, match="no adapters"):
        adapter_record(model)
