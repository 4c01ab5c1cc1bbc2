"""The adapted layer and its injection: init, gradients, fold/lowrank, Conv1D, merge/unmerge/unload."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_bert, make_tiny_gpt2, randomize_adapters

from kasa_lightning import (
    AdapterConfig,
    adapted_layers,
    adapter_loss,
    apply_adapters,
    merge_adapters,
    unload_adapters,
    unmerge_adapters,
)
from kasa_lightning.kasa.svd import extreme_triplets

IDS = torch.randint(0, 120, (3, 10), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_zero_update_at_init_equals_truncated_model(tiny_mlp):
    x = torch.randn(5, 24)
    ref = copy.deepcopy(tiny_mlp)
    with torch.no_grad():  # truncate by hand with a float64 full SVD
        for lin in (ref.fc1, ref.fc2):
            u, s, vh = torch.linalg.svd(lin.weight.double(), full_matrices=False)
            k = s.shape[0] - 4
            lin.weight.copy_(((u[:, :k] * s[:k]) @ vh[:k]).float())
    apply_adapters(tiny_mlp, AdapterConfig(r=4, target_modules=["fc1", "fc2"]))
    torch.testing.assert_close(tiny_mlp(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stacked", [True, False])
def test_gradients_reach_only_adapters_and_modules_to_save(tiny_mlp, stacked):
    config = AdapterConfig(r=4, target_modules=["fc1", "fc2"], modules_to_save=["head"])
    apply_adapters(tiny_mlp, config, stacked=stacked)
    randomize_adapters(tiny_mlp)
    loss = tiny_mlp(torch.randn(6, 24)).square().mean() + adapter_loss(tiny_mlp)
    loss.backward()
    trainable = {n for n, p in tiny_mlp.named_parameters() if p.requires_grad}
    adapters = {f"fc{i}.{t}" for i in (1, 2) for t in ("delta_u", "delta_sigma", "delta_v")}
    # stacked: fc1's dU (16, 4) and fc2's dV (16, 4) share a group; the other factors and the dsigma form three more
    assert trainable == {"head.weight", "head.bias"} | (
        {f"adapter_bank.g{g}" for g in range(4)} if stacked else adapters
    )
    for _, layer in adapted_layers(tiny_mlp):
        for t in ("delta_u", "delta_sigma", "delta_v"):
            assert layer.adapter_grad(t) is not None and layer.adapter_grad(t).abs().sum() > 0, t
    for n, p in tiny_mlp.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
        if p.grad is not None:
            assert p.grad.abs().sum() > 0, n


def test_fold_equals_lowrank_and_lowrank_keeps_base():
    fold = make_tiny_bert()
    low = copy.deepcopy(fold)
    original = copy.deepcopy(fold)
    apply_adapters(fold, AdapterConfig(r=4, truncation_mode="fold"))
    apply_adapters(low, AdapterConfig(r=4, truncation_mode="lowrank"))
    randomize_adapters(fold)
    randomize_adapters(low)
    torch.testing.assert_close(_logits(fold), _logits(low), atol=1e-5, rtol=1e-5)
    for name, layer_low in adapted_layers(low):
        orig = original.get_submodule(name).weight
        assert torch.equal(layer_low.base_layer.weight, orig)  # the base is untouched in lowrank mode
        assert not torch.equal(fold.get_submodule(name).base_layer.weight, orig)


@pytest.mark.parametrize("mode", ["fold", "lowrank"])
@pytest.mark.parametrize("method", ["kasa", "lora", "pissa", "milora"])
def test_merge_unmerge_unload_round_trips(mode, method):
    model = make_tiny_bert()
    original = copy.deepcopy(model)
    base_logits = _logits(model)
    apply_adapters(model, AdapterConfig(method=method, r=4, truncation_mode=mode, modules_to_save=["classifier"]))
    randomize_adapters(model)
    adapted = _logits(model)
    merge_adapters(model)
    merge_adapters(model)  # idempotent
    torch.testing.assert_close(_logits(model), adapted, atol=1e-5, rtol=1e-5)
    unmerge_adapters(model)
    unmerge_adapters(model)
    torch.testing.assert_close(_logits(model), adapted, atol=1e-5, rtol=1e-5)
    merge_adapters(model)
    unload_adapters(model)  # from the merged state
    assert not list(adapted_layers(model))
    for (n, p), (n0, p0) in zip(model.named_parameters(), original.named_parameters()):
        assert n == n0
        torch.testing.assert_close(p, p0, atol=1e-6, rtol=0)
        assert p.requires_grad == p0.requires_grad
    torch.testing.assert_close(_logits(model), base_logits, atol=1e-5, rtol=1e-5)
    apply_adapters(model, AdapterConfig(r=2))  # a clean model again: adapters can be applied anew


def test_conv1d_equals_the_same_weights_as_linear():
    gpt = make_tiny_gpt2()
    conv = gpt.transformer.h[0].attn.c_attn  # Conv1D: weight (in=32, out=96)
    lin = torch.nn.Linear(32, 96)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    holder_c = torch.nn.ModuleDict({"proj": conv})
    holder_l = torch.nn.ModuleDict({"proj": lin})
    for mode in ("fold", "lowrank"):
        hc, hl = copy.deepcopy(holder_c), copy.deepcopy(holder_l)
        cfg = AdapterConfig(r=4, target_modules=["proj"], truncation_mode=mode)
        apply_adapters(hc, cfg)
        apply_adapters(hl, cfg)
        randomize_adapters(hc)
        randomize_adapters(hl)
        x = torch.randn(2, 5, 32)
        torch.testing.assert_close(hc["proj"](x), hl["proj"](x), atol=1e-5, rtol=1e-5)
        merge_adapters(hc)
        torch.testing.assert_close(hc["proj"](x), hl["proj"](x), atol=1e-5, rtol=1e-5)
        unload_adapters(hc)
        torch.testing.assert_close(hc["proj"].weight, conv.weight, atol=1e-6, rtol=0)


def test_gpt2_whole_model_trains_on_c_attn():
    gpt = make_tiny_gpt2()
    apply_adapters(gpt, AdapterConfig(r=4, target_modules=["c_attn"]))
    assert len(list(adapted_layers(gpt))) == 2
    ids = torch.randint(0, 100, (2, 12))
    out = gpt(input_ids=ids, labels=ids)
    (out.loss + adapter_loss(gpt)).backward()
    grads = [layer.adapter_grad(n) for _, layer in adapted_layers(gpt) for n in ("delta_u", "delta_v", "delta_sigma")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_bfloat16_model_keeps_dtype_and_truncates_in_float64():
    model = make_tiny_bert().to(torch.bfloat16)
    w0 = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    apply_adapters(model, AdapterConfig(r=4))
    layer = model.bert.encoder.layer[0].attention.self.query
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert layer.delta_u.dtype == torch.bfloat16
    t = extreme_triplets(w0, 4)
    expected = (w0.double() - t.dropped()).to(torch.bfloat16)
    assert (layer.base_layer.weight.double() - expected.double()).abs().max() <= 1e-2
    assert torch.isfinite(_logits(model)).all()


def test_ablation_switches_shape_the_layer():
    lora_trunc = apply_adapters(make_tiny_bert(), AdapterConfig(r=4, singular_values=False, beta=0, gamma=0))
    layer = next(layer for _, layer in adapted_layers(lora_trunc))
    assert layer.delta_sigma is None and layer.dropped_u is not None
    lora = apply_adapters(make_tiny_bert(), AdapterConfig(method="lora", r=4))
    layer = next(layer for _, layer in adapted_layers(lora))
    assert layer.delta_sigma is None and layer.dropped_u is None
    assert adapter_loss(lora).item() == 0.0


@pytest.mark.parametrize("mode", ["fold", "lowrank"])
def test_in_place_adapter_add_equals_closed_form_and_spares_hooked_outputs(mode):
    """The forward accumulates eta ((x dV) * dsigma) dU^T into the base output in place (addmm_) when that output
    is the layer's own; outputs and gradients equal the closed form, and a base layer with a forward hook (which
    may keep its output) gets the out-of-place add, so what the hook saw is left as the base layer returned it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 10)
    original = lin.weight.detach().clone()
    layer = apply_adapters(torch.nn.Sequential(lin), AdapterConfig(r=3, target_modules=["0"], truncation_mode=mode))[0]
    with torch.no_grad():
        layer.delta_u.normal_()
        layer.delta_sigma.normal_()
    x = torch.randn(2, 5, 12, requires_grad=True)
    u, v, s = (
        layer.delta_u.detach().clone().requires_grad_(),
        layer.delta_v.detach().clone().requires_grad_(),
        layer.delta_sigma.detach().clone().requires_grad_(),
    )
    x_ref = x.detach().clone().requires_grad_()
    world = original - layer.dropped_u @ layer.dropped_v.T  # W - D, whichever mode holds it
    ref = x_ref @ world.T + lin.bias.detach() + layer.scaling * ((x_ref @ v) * s) @ u.T
    out = layer(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # accumulated into a non-view (tokens, out) tensor: autograd records AddmmBackward, not a CopySlices (which
    # would clone the whole output gradient in the backward)
    assert out.grad_fn.next_functions[0][0].name() == "AddmmBackward0"
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for got, want in (
        (x.grad, x_ref.grad),
        (layer.adapter_grad("delta_u"), u.grad),
        (layer.adapter_grad("delta_v"), v.grad),
        (layer.adapter_grad("delta_sigma"), s.grad),
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    seen = []
    handle = lin.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        out = layer(x)
        base_only = torch.nn.functional.linear(x, lin.weight, lin.bias)
    handle.remove()
    torch.testing.assert_close(seen[0], base_only)  # not changed by the adapter's add
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv1d", [False, True])
def test_folding_into_a_bfloat16_weight_goes_a_block_of_rows_at_a_time(monkeypatch, conv1d):
    # W - D computed in float32 and rounded once to bf16, element by element, whatever the blocks (5 rows each
    # here, the last one short); GPT-2's Conv1D stores W transposed, so its rows are strided views
    import kasa_lightning.kasa.weight_state as weight_state

    monkeypatch.setattr(weight_state, "_FOLD_BLOCK", 5 * 40)
    model = (make_tiny_gpt2() if conv1d else torch.nn.Sequential(torch.nn.Linear(40, 23))).to(torch.bfloat16)
    layer_name = "transformer.h.0.attn.c_attn" if conv1d else "0"
    base = model.get_submodule(layer_name)
    w0 = (base.weight.detach().T if conv1d else base.weight.detach()).clone()  # (out, in)
    apply_adapters(model, AdapterConfig(r=4, target_modules=["c_attn"] if conv1d else ["0"]))
    layer = model.get_submodule(layer_name)
    u, v = layer.dropped_factors()
    w = layer.base_layer.weight.detach()
    folded = (w.T if conv1d else w).clone()
    assert torch.equal(folded, (w0.float() - u.float() @ v.float().T).to(torch.bfloat16))
    restored = layer.restore_base().weight.detach()
    expected = (folded.float() + u.float() @ v.float().T).to(torch.bfloat16)
    assert torch.equal(restored.T if conv1d else restored, expected)


_FOLD_PEAK = """
import torch
from kasa_lightning import AdapterConfig, apply_adapters
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096)).to(torch.bfloat16)
apply_adapters(model, AdapterConfig(r=8, target_modules=["0"]))
layer = model[0]
u, v = (t.clone() for t in layer.dropped_factors())
def hwm():
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("VmHWM:")).split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = hwm()
layer.set_dropped(u.flip(1), v.flip(1))  # puts D back into W, and folds the new one: two passes over W
print((hwm() - before) / (4096 * 1024 * 2))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_folding_into_a_bfloat16_weight_makes_no_full_size_float32_temporary():
    # whole, W + D took W in float32 (2 bf16 copies of W), D (2), their sum (2) and the cast (1)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _FOLD_PEAK], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.0, out.stdout  # measured 0.39 (blocks of 1 MiB in float32); 6.0 whole
