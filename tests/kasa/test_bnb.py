"""Every method on a bitsandbytes base (4-bit NF4 and 8-bit LLM.int8), in both truncation modes, on the CPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")

from quantized_helpers import held_out_in_float, load_quantized, logits, save_tiny_llama, train  # noqa: E402

from kasa_lightning.kasa import (  # noqa: E402
    AdapterConfig,
    adapted_layers,
    adapter_state_dict,
    apply_adapters,
    load_adapter_state_dict,
    merge_adapters,
    unload_adapters,
)

TARGETS = ["q_proj", "v_proj"]
BASE_TYPES = {4: "Linear4bit", 8: "Linear8bitLt"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):  # noqa: ANN001, ANN201
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _check_reload(folder, bits: int, config: AdapterConfig, model) -> None:  # noqa: ANN001
    expected = logits(model)
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    fresh = load_quantized(folder, bits)
    apply_adapters(fresh, config, initialize=False)
    load_adapter_state_dict(fresh, state)
    torch.testing.assert_close(logits(fresh), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("mode", ["fold", "lowrank"])
def test_kasa_on_quantized_base(folder, bits: int, mode: str) -> None:  # noqa: ANN001
    model = load_quantized(folder, bits)
    torch.manual_seed(0)
    config = AdapterConfig(method="kasa", r=4, target_modules=TARGETS, truncation_mode=mode)
    apply_adapters(model, config)
    layers = list(adapted_layers(model))
    assert len(layers) == 4
    for name, layer in layers:
        assert type(layer.base_layer).__name__ == BASE_TYPES[bits], name
        assert (layer.out_features, layer.in_features) in ((64, 64), (32, 64))  # not the packed storage's shape
        assert held_out_in_float(layer) == [], name
    losses = train(model, 40)
    assert losses[-1] <= 0.95 * losses[0], losses
    for _, layer in adapted_layers(model):
        assert held_out_in_float(layer) == []
    _check_reload(folder, bits, config, model)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("mode", ["fold", "lowrank"])
@pytest.mark.parametrize("method", ["lora", "pissa", "milora"])
def test_every_method_trains_and_reloads(folder, bits: int, mode: str, method: str) -> None:  # noqa: ANN001
    model = load_quantized(folder, bits)
    torch.manual_seed(0)
    config = AdapterConfig(method=method, r=4, target_modules=TARGETS, truncation_mode=mode)
    apply_adapters(model, config)
    losses = train(model, 4)
    assert losses[-1] < losses[0], losses
    _check_reload(folder, bits, config, model)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("source", ["original", "dequantized"])
def test_fold_rewrites_the_base_and_unload_restores_it(folder, bits: int, source: str) -> None:  # noqa: ANN001
    from kasa_lightning.kasa import bnb

    model = load_quantized(folder, bits)
    q = model.model.layers[0].self_attn.q_proj
    codes = bnb.snapshot_codes(q)
    torch.manual_seed(0)
    config = AdapterConfig(method="kasa", r=4, target_modules=TARGETS, quantized_source=source)
    apply_adapters(model, config)
    layer = model.model.layers[0].self_attn.q_proj
    dropped = layer.dropped_weight()
    assert dropped is not None and dropped.abs().max() > 0
    folded = bnb.dequantize(q)
    source_w = layer.quantized.source_weight(q)
    # the base holds Q(W_src - D): W_src - D quantised again, so within one quantisation step of it
    err = (folded - (source_w - dropped)).abs().max()
    step = (bnb.dequantize_codes(q, codes) - source_w).abs().max() if source == "original" else None
    assert err < 0.5 * source_w.abs().max(), err
    if step is not None:
        assert err <= 1.5 * step + 1e-6  # comparable to the original weight's own quantisation error
    train(model, 3)
    unload_adapters(model)
    assert model.model.layers[0].self_attn.q_proj is q
    restored = bnb.snapshot_codes(q)
    assert torch.equal(restored.data, codes.data)  # the integer codes as loaded, bit for bit
    if bits == 8:
        assert torch.equal(restored.state, codes.state)
    else:
        assert torch.equal(restored.state.absmax, codes.state.absmax)


def test_merge_on_a_quantized_base_is_refused(folder) -> None:  # noqa: ANN001
    model = load_quantized(folder, 4)
    apply_adapters(model, AdapterConfig(method="kasa", r=4, target_modules=TARGETS))
    with pytest.raises(NotImplementedError, match="merging into a quantised base.*export format 'merged'"):
        merge_adapters(model)


def _layer(kind: str, weight: torch.Tensor, **settings) -> torch.nn.Module:  # noqa: ANN003
    """A bitsandbytes layer quantised on the CPU from ``weight`` (out, in) as its ``Params`` do at load."""
    from kasa_lightning.kasa import bnb

    b = bnb.import_bitsandbytes()
    out_f, in_f = weight.shape
    if kind == "4bit":
        own = {k: x for k, x in settings.items() if k != "blocksize"}  # the block size is the Params4bit's
        layer = b.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=torch.bfloat16, **own)
        layer.weight = b.nn.Params4bit(weight.clone(), requires_grad=False, **settings)
    else:
        layer = b.nn.Linear8bitLt(in_f, out_f, bias=False, has_fp16_weights=False)
        layer.weight = b.nn.Int8Params(weight.half(), requires_grad=False, has_fp16_weights=False)
    return layer.to("cpu")


@pytest.mark.parametrize(
    "kind, settings",
    [
        ("4bit", {"quant_type": "nf4", "compress_statistics": True, "blocksize": 64}),
        ("4bit", {"quant_type": "fp4", "compress_statistics": False, "blocksize": 128}),
        ("4bit", {"quant_type": "nf4", "compress_statistics": True, "quant_storage": torch.bfloat16}),
        ("8bit", {}),
    ],
)
@pytest.mark.parametrize("with_minus", [False, True])
def test_chunked_requantize_gives_the_codes_of_one_call_on_the_whole_weight(
    monkeypatch, kind: str, settings: dict, with_minus: bool
) -> None:  # noqa: ANN001
    # bitsandbytes' own quantiser on the whole of (W - u v^T) (float32, cast to the layer's dtype) is the oracle;
    # 40 x 96 with chunks of 3 (4-bit: 4, whole 64-blocks) rows: the last chunk is short, blocks straddle rows
    from kasa_lightning.kasa import bnb

    b = bnb.import_bitsandbytes()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 96, generator=g).bfloat16()
    u, v = torch.randn(40, 3, generator=g), torch.randn(96, 3, generator=g)
    layer = _layer(kind, w, **settings)
    target = w.float() - u @ v.T if with_minus else w.float()
    monkeypatch.setattr(bnb, "CHUNK_ELEMENTS", 3 * 96)
    source = w.clone()
    bnb.requantize(layer, w, (u, v) if with_minus else None)
    assert torch.equal(w, source)  # the caller's weight is not changed
    got = bnb.snapshot_codes(layer)
    if kind == "8bit":
        cb, scb, _ = b.functional.int8_vectorwise_quant(target.half())
        assert torch.equal(got.data, cb) and torch.equal(got.state, scb)
        return
    codes, state = b.functional.quantize_4bit(
        target.to(torch.bfloat16),
        blocksize=layer.weight.blocksize,
        compress_statistics=layer.weight.compress_statistics,
        quant_type=layer.weight.quant_type,
        quant_storage=layer.weight.quant_storage,
    )
    assert got.data.dtype == codes.dtype and torch.equal(got.data.view(torch.uint8), codes.view(torch.uint8))
    assert got.state.shape == state.shape and got.state.dtype == state.dtype and got.state.blocksize == state.blocksize
    assert torch.equal(got.state.absmax, state.absmax) and torch.equal(got.state.code, state.code)
    if state.state2 is not None:
        assert torch.equal(got.state.offset, state.offset)
        assert torch.equal(got.state.state2.absmax, state.state2.absmax)
        assert torch.equal(got.state.state2.code, state.state2.code)
    else:
        assert got.state.state2 is None
    x = torch.randn(5, 96, generator=g, dtype=torch.bfloat16)  # and the layer computes with them
    expected = x @ b.functional.dequantize_4bit(codes, state).T
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
