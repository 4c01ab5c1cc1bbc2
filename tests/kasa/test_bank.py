"""``AdapterBank`` / ``stack_adapters``: the stacked layout trains, saves and loads exactly like one parameter per
tensor, and the layers' views follow every change of the stacked parameters (steps, loads, moves, casts, copies)."""

import copy
import pickle

import pytest
import torch
from conftest import make_tiny_bert, randomize_adapters
from safetensors.torch import load_file, save_file

from kasa_lightning import (
    AdapterBank,
    AdapterConfig,
    adapted_layers,
    adapter_loss,
    adapter_parameters,
    adapter_state_dict,
    apply_adapters,
    load_adapter_state_dict,
    merge_and_unload,
    stack_adapters,
    unload_adapters,
    unstack_adapters,
)

IDS = torch.randint(0, 120, (3, 10), generator=torch.Generator().manual_seed(0))
TARGETS = ["query", "value", "intermediate.dense", "output.dense"]


def _pair():
    """The same adapted BERT twice: stacked (the default) and with one parameter per tensor."""
    config = AdapterConfig(r=4, target_modules=TARGETS, beta=0.1, gamma=0.1, modules_to_save=["classifier"])
    stacked = apply_adapters(make_tiny_bert(), config)
    own = apply_adapters(make_tiny_bert(), config, stacked=False)
    randomize_adapters(stacked)
    randomize_adapters(own)
    return stacked, own


def _train(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, foreach=True)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=IDS).logits.square().mean() + adapter_loss(model)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_stacked_layout_groups_by_kind_and_shape_and_keeps_the_state_dict():
    stacked, own = _pair()
    bank = stacked.adapter_bank
    assert isinstance(bank, AdapterBank)
    # 2 blocks x 5 layers (query, value, attention.output.dense, intermediate.dense, output.dense): factors of 32
    # rows (16 of them), of 48 (intermediate dU, output dV), and the 10 dsigma
    assert sorted(tuple(p.shape) for p in adapter_parameters(stacked)) == [(4, 48, 4), (10, 4), (16, 32, 4)]
    assert len(adapter_parameters(own)) == 3 * 10
    assert list(stacked.state_dict()) == list(own.state_dict())  # same keys in the same order
    for (k, a), b in zip(stacked.state_dict().items(), own.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # safetensors refuses tensors that share storage: the saved slices are copies
    state = adapter_state_dict(stacked)
    assert len({t.untyped_storage().data_ptr() for t in state.values()}) == len(state)


def test_training_is_the_same_in_both_layouts():
    stacked, own = _pair()
    assert _train(stacked) == pytest.approx(_train(own), rel=1e-6)
    for (name, a), (_, b) in zip(adapted_layers(stacked), adapted_layers(own)):
        for t in ("delta_u", "delta_v", "delta_sigma"):
            torch.testing.assert_close(getattr(a, t), getattr(b, t), rtol=1e-6, atol=1e-7, msg=f"{name}.{t}")
            torch.testing.assert_close(a.adapter_grad(t), b.adapter_grad(t), rtol=1e-5, atol=1e-7)
    # the views follow the optimiser's in-place updates: the layer reads the stepped values
    layer = next(layer for _, layer in adapted_layers(stacked))
    slot = layer._slots["delta_u"]
    assert torch.equal(layer.delta_u, stacked.adapter_bank.group(slot.group)[slot.position])


def test_loading_across_layouts_and_load_errors(tmp_path):
    stacked, own = _pair()
    _train(own)
    save_file(adapter_state_dict(own), tmp_path / "a.safetensors")
    load_adapter_state_dict(stacked, load_file(tmp_path / "a.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(stacked(input_ids=IDS).logits, own(input_ids=IDS).logits, rtol=1e-5, atol=1e-6)
    key = "bert.encoder.layer.0.attention.self.query.delta_u"
    state = stacked.state_dict()
    missing = stacked.load_state_dict({k: v for k, v in state.items() if k != key}, strict=False)
    assert key in missing.missing_keys and key not in missing.unexpected_keys
    assert not stacked.load_state_dict(state, strict=True).unexpected_keys
    with pytest.raises(RuntimeError, match=rf"size mismatch for {key}: copying a param with shape \(32, 2\)"):
        stacked.load_state_dict({**state, key: torch.zeros(32, 2)})


def test_views_follow_moves_casts_copies_and_grad_modes():
    stacked, _ = _pair()
    layer = next(layer for _, layer in adapted_layers(stacked))
    with torch.inference_mode():
        stacked(input_ids=IDS)  # views made in inference mode must not reach training
    with torch.no_grad():
        stacked(input_ids=IDS)
    loss = stacked(input_ids=IDS).logits.square().mean()
    loss.backward()
    assert layer.adapter_grad("delta_u").abs().sum() > 0
    stacked.double()
    assert layer.delta_u.dtype == torch.float64 and adapter_parameters(stacked)[0].dtype == torch.float64
    assert layer.delta_u.untyped_storage().data_ptr() == adapter_parameters(stacked)[0].untyped_storage().data_ptr()
    twin = copy.deepcopy(stacked)  # after a forward: the cached views (graph outputs) are not copied
    twin_layer = next(x for _, x in adapted_layers(twin))
    with torch.no_grad():
        adapter_parameters(twin)[0].add_(1.0)
    assert torch.equal(twin_layer.delta_u, layer.delta_u + 1.0)  # the copy's layers read the copy's bank
    again = pickle.loads(pickle.dumps(stacked))
    assert torch.equal(next(x for _, x in adapted_layers(again)).delta_u, layer.delta_u)


def test_unstack_stack_unload_and_merge():
    stacked, own = _pair()
    before = {k: v.clone() for k, v in stacked.state_dict().items()}
    unstack_adapters(stacked)
    assert not hasattr(stacked, "adapter_bank") and len(adapter_parameters(stacked)) == 30
    stack_adapters(stack_adapters(stacked))  # idempotent
    assert len(adapter_parameters(stacked)) == 3
    for k, v in stacked.state_dict().items():
        assert torch.equal(v, before[k]), k
    plain = unload_adapters(copy.deepcopy(stacked))
    assert not hasattr(plain, "adapter_bank") and all(p.requires_grad for p in plain.parameters())  # as before
    merged = merge_and_unload(copy.deepcopy(stacked))
    assert not hasattr(merged, "adapter_bank")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, stacked(input_ids=IDS).logits, rtol=1e-4, atol=1e-5)
