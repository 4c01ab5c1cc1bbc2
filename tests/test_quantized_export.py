"""Exports of a run on a 4-bit base: ``peft-lora`` loaded by PEFT on the same 4-bit base, ``merged`` into the
ORIGINAL full-precision weights, ``peft-kasa`` refused with the reason."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning_helpers import trainer

pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

from quantized_lightning_helpers import save_tiny_causal  # noqa: E402

from kasa_lightning import (  # noqa: E402
    AdapterConfig,
    KaSAModule,
    adapted_layers,
    adapter_state_dict,
    apply_adapters,
    load_adapter_state_dict,
)
from kasa_lightning.kasa import QuantizationConfig  # noqa: E402
from kasa_lightning.training.artifacts import export_module  # noqa: E402

IDS = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):  # noqa: ANN001, ANN201
    return save_tiny_causal(tmp_path_factory.mktemp("tiny-causal"))


def _trained(folder, tmp_path, mode: str) -> KaSAModule:  # noqa: ANN001
    L.seed_everything(0)
    config = AdapterConfig(r=4, target_modules=["q_proj", "v_proj"], truncation_mode=mode)
    module = KaSAModule(
        backbone=str(folder),
        task="causal_lm",
        adapter=config,
        quantization=QuantizationConfig(bits=4),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    ids = torch.randint(3, 250, (8, 12), generator=torch.Generator().manual_seed(0))
    batches = torch.utils.data.DataLoader([{"input_ids": i, "labels": i} for i in ids], batch_size=2)
    trainer(tmp_path, max_steps=4).fit(module, batches)
    return module.eval()


def _logits(model) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def _base(folder, quantized: bool):  # noqa: ANN001, ANN202
    from transformers import AutoModelForCausalLM

    if quantized:
        kwargs = {"quantization_config": QuantizationConfig(bits=4).to_bitsandbytes_config(), "device_map": "cpu"}
    else:
        kwargs = {"dtype": torch.float32}
    return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)


def test_peft_lora_on_the_same_4bit_base_and_merged_into_the_original_weights(tmp_path, folder) -> None:  # noqa: ANN001
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # lowrank keeps Q(W) as loaded and subtracts D: PEFT's LoRA (B A = update - D) on the same 4-bit base computes
    # the same sums in another order. Each adapted layer agrees to float32 rounding on the same input. Downstream,
    # the 4-bit kernel rounds its input to bf16 (the quantisation state's dtype), where a float32 difference of
    # ~1e-7 can move an element by one bf16 step, so the logits agree to one bf16 step of their size (2^-8 |logit|)
    lowrank = _trained(folder, tmp_path / "lowrank", "lowrank")
    export_module(lowrank, "peft-lora", tmp_path / "lowrank-lora")
    peft = PeftModel.from_pretrained(_base(folder, quantized=True), str(tmp_path / "lowrank-lora"))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for name, layer in adapted_layers(lowrank.model):
            theirs = peft.base_model.model.get_submodule(name)
            torch.testing.assert_close(layer(x), theirs(x), atol=1e-6, rtol=0, msg=name)
    ours = _logits(lowrank.model)
    torch.testing.assert_close(_logits(peft), ours, atol=2**-8 * ours.abs().max().item(), rtol=0)

    # fold: merged = W - D + update from the original float32 checkpoint, equal to the full-precision model with
    # the same adapters, and to PEFT's LoRA on the full-precision base
    fold = _trained(folder, tmp_path / "fold", "fold")
    export_module(fold, "merged", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    assert "quantization_config" not in merged.config.to_dict()
    full = apply_adapters(_base(folder, quantized=False), fold.adapter_config, initialize=False)
    load_adapter_state_dict(full, adapter_state_dict(fold.model))
    torch.testing.assert_close(_logits(merged), _logits(full), atol=1e-5, rtol=0)
    export_module(fold, "peft-lora", tmp_path / "fold-lora")
    peft_full = PeftModel.from_pretrained(_base(folder, quantized=False), str(tmp_path / "fold-lora"))
    torch.testing.assert_close(_logits(peft_full), _logits(merged), atol=1e-5, rtol=0)
    # every tensor that no adapter touches is the original's, bit for bit
    original = _base(folder, quantized=False).state_dict()
    for key, value in merged.state_dict().items():
        if "q_proj" not in key and "v_proj" not in key:
            assert torch.equal(value, original[key]), key

    with pytest.raises(ValueError, match="format='kasa' from a quantised base .* in place .* use format='lora'"):
        export_module(fold, "peft-kasa", tmp_path / "kasa")
