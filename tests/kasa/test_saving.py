"""Adapter-only state: save, rebuild from the original base, and refuse what does not fit."""

import copy

import pytest
import torch
from conftest import make_tiny_bert, randomize_adapters

from kasa_lightning import (
    AdapterConfig,
    adapted_layers,
    adapter_state_dict,
    apply_adapters,
    load_adapter,
    load_adapter_state_dict,
    merge_adapters,
    save_adapter,
)

IDS = torch.randint(0, 120, (2, 8), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_state_holds_only_adapters_truncation_and_saved_modules():
    model = apply_adapters(make_tiny_bert(), AdapterConfig(r=4, modules_to_save=["classifier"]))
    keys = set(adapter_state_dict(model))
    layer_keys = {
        f"{n}.{k}"
        for n, _ in adapted_layers(model)
        for k in ("delta_u", "delta_sigma", "delta_v", "dropped_u", "dropped_v")
    }
    assert keys == layer_keys | {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("mode", ["fold", "lowrank"])
def test_save_then_rebuild_from_original_base(tmp_path, mode):
    original = make_tiny_bert()
    model = apply_adapters(
        copy.deepcopy(original), AdapterConfig(r=4, truncation_mode=mode, modules_to_save=["classifier"])
    )
    randomize_adapters(model)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    rebuilt = load_adapter(copy.deepcopy(original), path)
    torch.testing.assert_close(_logits(rebuilt), _logits(model), atol=1e-5, rtol=1e-5)
    for (n, p), (_, q) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)


def test_loading_into_an_initialised_or_merged_model_keeps_the_base_consistent(tmp_path):
    original = make_tiny_bert()
    src = apply_adapters(copy.deepcopy(original), AdapterConfig(r=4))
    randomize_adapters(src)
    state = adapter_state_dict(src)
    # a model whose truncation came from another weight (seed 5): loading must replace it, not stack it
    other = make_tiny_bert(seed=0)
    dst = apply_adapters(other, AdapterConfig(r=4))
    with torch.no_grad():
        for _, layer in adapted_layers(dst):
            layer.set_dropped(layer.dropped_u * 0.5, layer.dropped_v)
    merge_adapters(dst)
    load_adapter_state_dict(dst, state)
    torch.testing.assert_close(_logits(dst), _logits(src), atol=1e-5, rtol=1e-5)


def test_config_mismatch_is_refused_before_anything_changes(tmp_path):
    model = apply_adapters(make_tiny_bert(), AdapterConfig(r=4))
    path = save_adapter(model, tmp_path / "a.safetensors")
    other = apply_adapters(make_tiny_bert(), AdapterConfig(r=2))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="another AdapterConfig.*'r': \\(4, 2\\)"):
        load_adapter_state_dict(other, path)
    with pytest.raises(ValueError, match="other shapes"):
        load_adapter_state_dict(other, adapter_state_dict(model))
    lora = apply_adapters(make_tiny_bert(), AdapterConfig(method="lora", r=4))
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter_state_dict(lora, adapter_state_dict(model))
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_not_an_adapter_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a kasa-lightning adapter"):
        load_adapter(make_tiny_bert(), tmp_path / "x.safetensors")
