"""Quantised bases against independent references: PEFT's LoRA on the same 4-bit base, and KaSA on the
full-precision weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")

from quantized_helpers import load_full, load_quantized, logits, save_tiny_llama, train  # noqa: E402

from kasa_lightning.kasa import AdapterConfig, adapted_layers, adapter_state_dict, apply_adapters, bnb  # noqa: E402

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):  # noqa: ANN001, ANN201
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_lora_on_4bit_equals_peft_qlora(folder) -> None:  # noqa: ANN001
    from peft import LoraConfig, get_peft_model

    ours = load_quantized(folder, 4)
    torch.manual_seed(0)
    apply_adapters(ours, AdapterConfig(method="lora", r=4, alpha=8, target_modules=TARGETS, init_u="normal"))
    peft_model = get_peft_model(
        load_quantized(folder, 4), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, layer in adapted_layers(ours):
            peft_layer = peft_model.base_model.model.get_submodule(name)
            assert type(peft_layer.base_layer).__name__ == "Linear4bit"  # PEFT's bnb 4-bit LoRA layer
            peft_layer.lora_A["default"].weight.copy_(layer.delta_v.T)  # A (r, in)
            peft_layer.lora_B["default"].weight.copy_(layer.delta_u)  # B (out, r)
    expected = logits(peft_model)
    got = logits(ours)
    assert (got - logits(load_quantized(folder, 4))).abs().max() > 1e-3  # the update is not zero
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["fold", "lowrank"])
def test_kasa_on_4bit_against_full_precision(folder, mode: str) -> None:  # noqa: ANN001
    """Same adapter, 4-bit base vs float32 base, compared layer by layer.

    Tolerance, derived: each adapted layer computes y = x B^T + update(x) with B its base matrix: W - D (fold) or
    W then - x D^T (lowrank). Full precision uses B exactly, the 4-bit layer deq(Q(B)), and the update and D are
    the same tensors, so y_4bit - y_fp = x E^T with E = deq(Q(B)) - B and |(x E^T)_i| <= ||x_i||_2 ||E||_2 (the
    spectral norm) for every row i. We measure E0 = deq(Q(W)) - W on the base as transformers loaded it (no code
    of ours involved). lowrank keeps Q(W), so E = E0 and the bound is exact (+ float32 rounding). fold
    quantises W - D, whose blocks have the same absmax as W's up to |D| << |W| (D holds the r smallest singular
    values), so E has E0's size: we allow 1.5 ||E0||_2.
    """
    fp = load_full(folder)
    q = load_quantized(folder, 4)
    e0 = {}
    for i in range(len(q.model.layers)):
        for t in TARGETS:
            name = f"model.layers.{i}.self_attn.{t}"
            w = fp.get_submodule(name).weight.detach()
            e0[name] = torch.linalg.matrix_norm(bnb.dequantize(q.get_submodule(name)) - w, ord=2)
    config = AdapterConfig(method="kasa", r=4, target_modules=TARGETS, truncation_mode=mode, init_u="normal")
    torch.manual_seed(0)
    apply_adapters(q, config)
    torch.manual_seed(0)
    apply_adapters(fp, config)
    mine, theirs = adapter_state_dict(q), adapter_state_dict(fp)
    for key in mine:  # same init, and the triplets come from the original weight, not from Q(W)
        if ".dropped_" in key and mode == "fold":  # D kept in bf16 on a quantised base: 2^-9 relative rounding
            assert mine[key].dtype == torch.bfloat16
            torch.testing.assert_close(mine[key].float(), theirs[key], rtol=2**-8, atol=1e-6)
        else:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6)
    factor = 1.0 + 1e-4 if mode == "lowrank" else 1.5
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for name, layer in adapted_layers(q):
            diff = layer(x) - fp.get_submodule(name)(x)
            # plus what the bf16 rounding of D adds to E: ||D_fp - D_bf16||_2
            rounding = torch.linalg.matrix_norm(layer.dropped_weight() - fp.get_submodule(name).dropped_weight(), ord=2)
            bound = x.norm(dim=1, keepdim=True) * (e0[name] * factor + rounding) + 1e-5
            assert (diff.abs() <= bound).all(), (name, (diff.abs() / bound).max())
            assert diff.abs().max() > 1e-4  # a 4-bit base is not the float32 one: the check can fail
    # the whole model: the 4-bit KaSA stays as close to full-precision KaSA as the 4-bit base is to the fp base
    base_gap = (logits(load_quantized(folder, 4)) - logits(load_full(folder))).abs().max()
    assert (logits(q) - logits(fp)).abs().max() <= 1.5 * base_gap


def test_trained_adapters_differ_only_by_the_base(folder) -> None:  # noqa: ANN001
    """Training on the 4-bit base moves the loss like training on the float32 base (same data, same init)."""
    q, fp = load_quantized(folder, 4), load_full(folder)
    config = AdapterConfig(method="kasa", r=4, target_modules=TARGETS)
    for model in (q, fp):
        torch.manual_seed(0)
        apply_adapters(model, config)
    lq, lf = train(q, 10), train(fp, 10)
    assert lq[-1] < 0.95 * lq[0] and lf[-1] < 0.95 * lf[0]
    assert abs((lq[0] - lq[-1]) - (lf[0] - lf[-1])) < 0.25 * (lf[0] - lf[-1])
