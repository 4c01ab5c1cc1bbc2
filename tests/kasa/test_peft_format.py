"""Hugging Face PEFT as an independent numerical oracle: KaSA, LoRA, PiSSA, the regulariser and both exports."""

import copy

import pytest
import torch
from conftest import TinyMLP, make_tiny_bert, make_tiny_gpt2, randomize_adapters

from kasa_lightning import AdapterConfig, adapted_layers, adapter_loss, apply_adapters, export_peft

peft = pytest.importorskip("peft")

IDS = torch.randint(0, 120, (3, 10), generator=torch.Generator().manual_seed(0))


def _copy_into_peft(ours, theirs) -> None:
    """Our (dU, dsigma, dV) into PEFT's (lora_B, lora_diag, lora_A)."""
    with torch.no_grad():
        for name, layer in adapted_layers(ours):
            target = theirs.base_model.model.get_submodule(name)
            target.lora_B["default"].weight.copy_(layer.delta_u)
            target.lora_A["default"].weight.copy_(layer.delta_v.T)
            if layer.delta_sigma is not None:
                target.lora_diag["default"].copy_(layer.delta_sigma)


def _run(model, x):
    out = model(x) if isinstance(x, torch.Tensor) and x.dtype.is_floating_point else model(input_ids=x).logits
    return out


@pytest.mark.parametrize("which", ["mlp", "bert"])
def test_kasa_matches_peft(which):
    if which == "mlp":
        torch.manual_seed(0)
        base, x, targets = TinyMLP(), torch.randn(7, 24), ["fc1", "fc2"]
    else:
        base, x, targets = make_tiny_bert(), IDS, ["query", "value"]
    theirs_base = copy.deepcopy(base)
    cfg = AdapterConfig(r=4, alpha=8, target_modules=targets, beta=0.01, gamma=0.02)
    ours = apply_adapters(base, cfg)
    theirs = peft.get_peft_model(
        theirs_base,
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, kasa_config=peft.KasaConfig(beta=0.01, gamma=0.02)),
    )
    # same truncated base weights
    for name, layer in adapted_layers(ours):
        peft_w = theirs.base_model.model.get_submodule(name).base_layer.weight
        torch.testing.assert_close(layer.base_layer.weight, peft_w, atol=2e-5, rtol=1e-4)
    randomize_adapters(ours)
    _copy_into_peft(ours, theirs)
    y_ours, y_theirs = _run(ours, x), _run(theirs, x)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-4, rtol=1e-4)
    # same regulariser ("paper" + "sum" is PEFT's definition)
    reg_ours, reg_theirs = adapter_loss(ours), theirs._get_kasa_loss()
    torch.testing.assert_close(reg_ours, reg_theirs, atol=1e-6, rtol=1e-5)
    # same gradients of task loss + regulariser
    (y_ours.square().mean() + reg_ours).backward()
    (y_theirs.square().mean() + reg_theirs).backward()
    for name, layer in adapted_layers(ours):
        t = theirs.base_model.model.get_submodule(name)
        grad = layer.adapter_grad
        torch.testing.assert_close(grad("delta_u"), t.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(grad("delta_v"), t.lora_A["default"].weight.grad.T, atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(grad("delta_sigma"), t.lora_diag["default"].grad, atol=1e-5, rtol=1e-3)


def test_lora_matches_peft():
    base = make_tiny_bert()
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    )
    ours = apply_adapters(base, AdapterConfig(method="lora", r=4, alpha=8))
    randomize_adapters(ours)
    _copy_into_peft(ours, theirs)
    torch.testing.assert_close(_run(ours, IDS), _run(theirs, IDS), atol=1e-5, rtol=1e-5)


def test_pissa_matches_peft():
    base = make_tiny_bert()
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights="pissa"),
    )
    ours = apply_adapters(base, AdapterConfig(method="pissa", r=4, alpha=8))
    for name, layer in adapted_layers(ours):
        t = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.base_layer.weight, t.base_layer.weight, atol=1e-5, rtol=1e-4)
        # factors agree up to the sign of each singular pair
        b, a = t.lora_B["default"].weight, t.lora_A["default"].weight
        sign = torch.sign((layer.delta_u * b).sum(0))
        torch.testing.assert_close(layer.delta_u, b * sign, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.delta_v, a.T * sign, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_run(ours, IDS), _run(theirs, IDS), atol=1e-5, rtol=1e-5)


def _reload_in_peft(path, original):
    return peft.PeftModel.from_pretrained(copy.deepcopy(original), str(path)).eval()


@pytest.mark.parametrize("mode", ["fold", "lowrank"])
def test_export_kasa_and_lora_load_in_peft(tmp_path, mode):
    original = make_tiny_bert()
    ours = apply_adapters(
        copy.deepcopy(original), AdapterConfig(r=4, alpha=8, modules_to_save=["classifier"], truncation_mode=mode)
    )
    randomize_adapters(ours)
    with torch.no_grad():
        ours.classifier.weight.add_(0.5)
    expected = _run(ours, IDS)
    for fmt in ("kasa", "lora"):
        export_peft(ours, tmp_path / fmt, format=fmt)
        loaded = _reload_in_peft(tmp_path / fmt, original)
        torch.testing.assert_close(_run(loaded, IDS), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "pissa", "milora"])
def test_export_lora_for_baselines(tmp_path, method):
    original = make_tiny_bert()
    ours = apply_adapters(copy.deepcopy(original), AdapterConfig(method=method, r=4))
    randomize_adapters(ours)
    export_peft(ours, tmp_path, format="lora")
    torch.testing.assert_close(_run(_reload_in_peft(tmp_path, original), IDS), _run(ours, IDS), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="format='lora'"):
        export_peft(ours, tmp_path / "k", format="kasa")


def test_gpt2_conv1d_exports_as_lora_only(tmp_path):
    original = make_tiny_gpt2()
    ours = apply_adapters(copy.deepcopy(original), AdapterConfig(r=4, target_modules=["c_attn"]))
    randomize_adapters(ours)
    ids = torch.randint(0, 100, (2, 9))
    with pytest.raises(ValueError, match="Conv1D"):
        export_peft(ours, tmp_path / "kasa", format="kasa")
    export_peft(ours, tmp_path / "lora", format="lora")
    loaded = _reload_in_peft(tmp_path / "lora", original)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
