"""Saving and loading adapters: the adapter state dict (what was trained plus the truncation state: the removed
rank-r part), and nothing of the frozen base.

A saved adapter is a safetensors file whose metadata holds the ``AdapterConfig`` as JSON, so that
``load_adapter(base_model, path)`` rebuilds the adapted model from the original base without any SVD.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .atomic import write_bytes_atomically
from .config import AdapterConfig
from .inject import adapted_layers, adapter_config, adapter_record, apply_adapters

FORMAT = "kasa-lightning-adapter"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter parameters, removed-part buffers and ``modules_to_save`` parameters, keyed by qualified name."""
    record = adapter_record(model)  # raises if there are no adapters
    out: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model):
        for key in ("delta_u", "delta_sigma", "delta_v", "dropped_u", "dropped_v"):
            t = getattr(layer, key)
            if t is not None:  # a slice of a stacked parameter is copied: no two tensors share storage
                out[f"{name}.{key}"] = t.detach().clone() if key in layer._slots else t.detach()
    for saved in record.saved:
        for pname, p in model.get_submodule(saved).named_parameters():
            out[f"{saved}.{pname}"] = p.detach()
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``adapter_state_dict(model)`` and its config to a safetensors file (atomically, mode 0o666 & ~umask)."""
    from safetensors.torch import save

    tensors = {k: v.cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    data = save(tensors, metadata={"format": FORMAT, "adapter_config": adapter_config(model).to_json()})
    return write_bytes_atomically(path, data)


def read_adapter(path: str | os.PathLike) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a file written by ``save_adapter``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "adapter_config" not in meta:
        raise ValueError(f"{path} is not a kasa-lightning adapter file (no adapter_config in its metadata)")
    return AdapterConfig.from_dict(json.loads(meta["adapter_config"])), load_file(str(path))


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor] | str | os.PathLike) -> nn.Module:
    """Load adapter tensors (a mapping, or a file from ``save_adapter``) into an adapted ``model``.

    Checks, before anything changes, that the file's config (when there is one) and every key and shape match
    the model's adapters; the truncation is re-applied to the base weights consistently.
    """
    config = adapter_config(model)
    if not isinstance(state, Mapping):
        file_config, state = read_adapter(state)
        mine, theirs = config.structure(), file_config.structure()
        diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        if diff:
            raise ValueError(
                "the adapter file was saved with another AdapterConfig; (file, model) values: "
                f"{diff}. Apply adapters with the file's config (load_adapter(base_model, path) does that)."
            )
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "adapter state does not fit this model's adapters (another config or backbone?): "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [
        f"{k}: saved {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(f"adapter tensors have other shapes than this model's (another r or backbone?): {wrong[:5]}")
    result = model.load_state_dict(dict(state), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return model


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild the adapted model from the ORIGINAL base ``model`` and a ``save_adapter`` file (no SVD needed)."""
    config, tensors = read_adapter(path)
    apply_adapters(model, config, initialize=False)
    return load_adapter_state_dict(model, tensors)
