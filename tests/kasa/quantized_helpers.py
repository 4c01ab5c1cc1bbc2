"""A tiny LLaMA saved to a folder and loaded quantised by transformers + bitsandbytes, for the quantised-base tests."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def load_quantized(folder: Path, bits: int, quant_type: str = "nf4"):  # noqa: ANN201
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kasa_lightning.kasa import import_bitsandbytes

    import_bitsandbytes()
    if bits == 4:
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type)
    else:
        qc = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu", quantization_config=qc)


def load_full(folder: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (4, 16), generator=g)


def train(model, steps: int, lr: float = 3e-2) -> list[float]:  # noqa: ANN001
    """``steps`` AdamW steps on one batch with task loss + adapter_loss; the loss of every step."""
    from kasa_lightning.kasa import adapter_loss

    x = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=x, labels=x).loss + adapter_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def logits(model) -> torch.Tensor:  # noqa: ANN001
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch(1)).logits


def held_out_in_float(layer) -> list[str]:  # noqa: ANN001
    """Names of the floating-point (out, in) tensors the adapted layer holds: parameters, buffers (the base layer's
    included) and plain attributes (its own, its base layer's and that of the base layer's state)."""
    shape = (layer.out_features, layer.in_features)
    found = list(layer.named_parameters()) + list(layer.named_buffers())
    for owner, prefix in (
        (layer, ""),
        (layer.base_layer, "base_layer."),
        (getattr(layer.base_layer, "state", None), "state."),
    ):
        for key, value in vars(owner).items() if owner is not None else ():
            if isinstance(value, torch.Tensor):
                found.append((prefix + key, value))
    return [name for name, t in found if t.is_floating_point() and tuple(t.shape) in (shape, shape[::-1])]
