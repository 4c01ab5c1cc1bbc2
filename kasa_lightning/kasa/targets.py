"""``target_modules="auto"``: the layers the paper adapts, looked up from the model's architecture.

The paper (and PEFT's defaults for these architectures) adapts the query and value projections of every attention
block. Their names differ per architecture, so ``"auto"`` reads ``model.config.model_type`` (the Hugging Face
architecture name) and looks it up in :data:`AUTO_TARGETS`. A model of another type (or a plain ``nn.Module``
without a Hugging Face config) is refused with the names of its linear layers, so that the user can name the
targets. Pure PyTorch: the table is data, the model is only inspected.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .config import AdapterConfig
from .layer import is_conv1d

#: ``model.config.model_type`` -> the paper's target layers (the query and value projections of attention).
AUTO_TARGETS: dict[str, tuple[str, ...]] = {
    # encoders (MiniLM checkpoints such as all-MiniLM-L6-v2 are model_type "bert")
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),  # DeBERTa-v2 and -v3
    # decoders
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),  # GPT-2 computes query, key and value in one Conv1D
}


def model_type(model: nn.Module) -> str | None:
    """``model.config.model_type`` of a Hugging Face model, or None for a model without one."""
    config = getattr(model, "config", None)
    value = getattr(config, "model_type", None)
    return value if isinstance(value, str) and value else None


def is_auto(config: AdapterConfig) -> bool:
    """Whether ``config.target_modules`` asks for the architecture's default targets."""
    return list(config.target_modules) == ["auto"]


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the adaptable (``nn.Linear`` / ``Conv1D``) layers of ``model``."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and (isinstance(module, nn.Linear) or is_conv1d(module))
    }
    return sorted(names)


def resolve_target_modules(model: nn.Module, config: AdapterConfig) -> AdapterConfig:
    """``config`` with ``target_modules="auto"`` replaced by the targets of ``model``'s architecture; any other
    config is returned unchanged. Raises ``ValueError`` for an architecture without an entry in ``AUTO_TARGETS``,
    listing the linear layer names found in the model."""
    if not is_auto(config):
        return config
    kind = model_type(model)
    targets = AUTO_TARGETS.get(kind) if kind is not None else None
    if targets is None:
        what = f"model_type {kind!r}" if kind is not None else f"{type(model).__name__} (no config.model_type)"
        raise ValueError(
            f"AdapterConfig.target_modules='auto' knows no targets for {what}; it knows "
            f"{sorted(AUTO_TARGETS)}. Name the layers instead (e.g. target_modules=['q_proj', 'v_proj']); "
            f"linear layer names in this model: {linear_layer_names(model)}"
        )
    return dataclasses.replace(config, target_modules=list(targets))
