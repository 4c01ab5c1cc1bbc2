"""A full-precision merged model written from the ORIGINAL checkpoint files, for a model whose base is quantised.

Merging into a quantised base is refused (``weight_state._MERGE_REFUSAL``): the update is far below the
quantisation step.
What a user deploys instead is the original full-precision model with the update merged in:

    W' = W - D + eta dU diag(dsigma) dV^T      (out, in), computed in float32, stored in W's own dtype

with W read from the safetensors checkpoint the model was loaded from (``quant_source.checkpoint_files``), never
from the quantised codes. The files are rewritten one at a time with the same names and the same index, so the
peak memory is one checkpoint shard (transformers writes shards of at most 5 GB) plus one float32 layer; every
other tensor (embeddings, norms, layers without adapters) is copied bit for bit, and the ``modules_to_save``
modules get their trained tensors. The output loads with ``from_pretrained`` like the original checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .inject import adapted_layers, adapter_record
from .layer import AdaptedLayer
from .quant_source import checkpoint_files


def write_merged_from_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s adapted weights merged into the original checkpoint's tensors under ``path`` (the
    checkpoint's ``config.json``, shard index and other small .json/.txt files are copied)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = checkpoint_files(model)  # tensor name -> file; refuses a model without safetensors files
    source = next(iter(files.values())).parent
    merged: dict[str, AdaptedLayer] = {f"{name}.weight": layer for name, layer in adapted_layers(model)}
    missing = sorted(set(merged) - set(files))
    if missing:
        raise KeyError(f"the checkpoint at {source} has no tensor {missing[0]!r}: was the model loaded from it?")
    trained = {
        f"{saved}.{pname}": p.detach()
        for saved in adapter_record(model).saved
        for pname, p in model.get_submodule(saved).named_parameters()
    }
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(set(files.values())):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                w = f.get_tensor(key)
                if key in merged:
                    layer = merged[key]
                    new = w.float() + layer.delta_weight().detach().cpu()  # (out, in)
                    dropped = layer.dropped_weight()
                    if dropped is not None:
                        new -= dropped.cpu()
                    w = new.to(w.dtype)
                elif key in trained:
                    w = trained[key].cpu().to(w.dtype)
                tensors[key] = w.contiguous()
        save_file(tensors, str(out / file.name), metadata=metadata)
        del tensors
    for extra in source.iterdir():  # config.json, generation_config.json, the shard index
        if extra.is_file() and extra.suffix in (".json", ".txt") and not (out / extra.name).exists():
            shutil.copyfile(extra, out / extra.name)
    return out
