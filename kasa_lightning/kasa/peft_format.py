"""Write an adapted model as a Hugging Face PEFT adapter directory.

``format="kasa"``: a PEFT KaSA adapter (``LoraConfig(kasa_config=...)``). PEFT truncates the ORIGINAL base itself
when it loads the adapter, so the file holds only lora_A = dV^T (r, in), lora_B = dU (out, r) and
lora_diag = dsigma. PEFT's KaSA supports ``nn.Linear`` targets only.

``format="lora"``: a plain LoRA adapter on the ORIGINAL base weights, which any LoRA consumer loads without
knowing KaSA. With the removed part D = dropped_u dropped_v^T the total change of each weight is

    W' - W = -D + eta dU diag(dsigma) dV^T = B A,   B = [-dropped_u | eta dU diag(dsigma)]  (out, 2r)
                                                    A = [dropped_v^T ; dV^T]               (2r, in)

written with lora_alpha = rank so that PEFT's scaling is 1 (rank r for LoRA, which removes nothing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .atomic import write_bytes_atomically
from .inject import adapted_layers, adapter_record
from .layer import AdaptedLayer, is_conv1d

_PREFIX = "base_model.model."


def _lora_factors(layer: AdaptedLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (out, rank), A (rank, in)) with B A = W' - W, in float32."""
    u = layer.delta_u.detach().float() * layer.scaling
    if layer.delta_sigma is not None:
        u = u * layer.delta_sigma.detach().float()
    b, a = u, layer.delta_v.detach().float().T
    dropped = layer.dropped_factors()  # (out, r), (in, r) or None
    if dropped is not None:
        b = torch.cat([-dropped[0].float(), b], dim=1)
        a = torch.cat([dropped[1].float().T, a], dim=0)
    return b, a


def export_peft(
    model: nn.Module,
    path: str | os.PathLike,
    format: Literal["kasa", "lora"] = "kasa",
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained``
    loads on the ORIGINAL (untruncated) base model to the same outputs as ``model``."""
    from safetensors.torch import save

    record = adapter_record(model)
    config = record.config
    layers = list(adapted_layers(model))
    if format not in ("kasa", "lora"):
        raise ValueError(f"format={format!r}: choose 'kasa' (PEFT KaSA adapter) or 'lora' (plain LoRA adapter)")
    conv = [name for name, layer in layers if is_conv1d(layer.base_layer)]
    if format == "kasa":
        if config.method != "kasa" or not config.truncate or not config.singular_values:
            raise ValueError(
                f"format='kasa' needs a full KaSA adapter (method='kasa' with truncation and singular values), "
                f"this one is method={config.method!r}, truncate={config.truncate}, "
                f"singular_values={config.singular_values}; use format='lora'"
            )
        quantized = [name for name, layer in layers if layer.quantized is not None]
        if quantized:
            raise ValueError(
                f"format='kasa' from a quantised base ({quantized[0]!r} is a bitsandbytes layer) is not supported: "
                "PEFT's KaSA truncates the base weight in place by an SVD when it loads the adapter, which it "
                "cannot do on bitsandbytes layers (it loads the adapter onto the 4-bit base untruncated, and the "
                "outputs are wrong); use format='lora' (the same model as a plain LoRA adapter, which PEFT loads on "
                "the quantised or the full-precision base) or the 'merged' export"
            )
        if conv:
            raise ValueError(
                f"PEFT's KaSA rejects transformers Conv1D layers ({conv[:3]}...); use format='lora', which writes "
                "the same model as a plain LoRA adapter that PEFT loads on Conv1D"
            )
    if conv and len(conv) != len(layers):
        raise ValueError(
            f"PEFT needs one fan_in_fan_out value per adapter, but the targets mix Conv1D ({conv[:2]}) and "
            "nn.Linear layers; export them as two adapters (narrow target_modules)"
        )

    tensors: dict[str, torch.Tensor] = {}
    ranks = set()
    for name, layer in layers:
        key = f"{_PREFIX}{name}"
        if format == "kasa":
            assert layer.delta_sigma is not None  # a KaSA export needs the singular values (checked above)
            tensors[f"{key}.lora_A.weight"] = layer.delta_v.detach().T
            tensors[f"{key}.lora_B.weight"] = layer.delta_u.detach()
            tensors[f"{key}.lora_diag"] = layer.delta_sigma.detach()
        else:
            b, a = _lora_factors(layer)
            tensors[f"{key}.lora_A.weight"] = a
            tensors[f"{key}.lora_B.weight"] = b
            ranks.add(a.shape[0])
    for saved in record.saved:
        for pname, p in model.get_submodule(saved).named_parameters():
            tensors[f"{_PREFIX}{saved}.{pname}"] = p.detach()

    rank = config.r if format == "kasa" else ranks.pop()
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        # what PEFT itself writes for task_type None: lets peft.AutoPeftModel* rebuild the base model's class
        "auto_mapping": {"base_model_class": type(model).__name__, "parent_library": type(model).__module__},
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": config.alpha if format == "kasa" else rank,
        "lora_dropout": config.dropout if format == "kasa" else 0.0,
        "target_modules": [name for name, _ in layers],
        "modules_to_save": list(record.saved) or None,
        "fan_in_fan_out": bool(conv),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "kasa_config": {"beta": config.beta, "gamma": config.gamma} if format == "kasa" else None,
    }
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # written atomically with the usual file mode (safetensors' own save_file creates 0600 files)
    write_bytes_atomically(
        out / "adapter_model.safetensors", save({k: v.cpu().contiguous() for k, v in tensors.items()})
    )
    write_bytes_atomically(out / "adapter_config.json", (json.dumps(peft_config, indent=2) + "\n").encode())
    return out
