"""Building the Hugging Face model a ``KaSAModule`` adapts: a Hub name, a local directory or ``pkg://`` (through
``kasa_lightning.hub``), or a config with random weights; the auto class follows the task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kasa_lightning.hub import resolve_pretrained
from kasa_lightning.training._load_report import from_pretrained_reported

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_backbone(
    backbone: str,
    task: str,
    num_labels: int,
    backbone_config: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> nn.Module:
    """The model for ``task`` (``AutoModelForCausalLM`` or ``AutoModelForSequenceClassification``): from
    ``backbone_config`` (``{"model_type": ..., ...}``, random weights) when given, else ``from_pretrained(backbone)``;
    in ``dtype`` (a key of ``DTYPES``) when given. Errors name the ``model.*`` setting."""
    import transformers

    auto = (
        transformers.AutoModelForCausalLM if task == "causal_lm" else (transformers.AutoModelForSequenceClassification)
    )
    kwargs: dict[str, Any] = {}
    if task != "causal_lm":
        kwargs["num_labels"] = num_labels
        if task == "regression":
            kwargs["problem_type"] = "regression"
    if backbone_config is not None:
        cfg = dict(backbone_config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ValueError("model.backbone_config needs a 'model_type' (e.g. 'llama', 'bert', 'gpt2')")
        try:
            model = auto.from_config(transformers.AutoConfig.for_model(model_type, **cfg, **kwargs))
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"model.backbone_config (model_type {model_type!r}) could not be built for task {task!r}: {err}"
            ) from err
        if dtype:
            model = model.to(DTYPES[dtype])
    else:
        path = resolve_pretrained(backbone)
        if dtype:
            kwargs["dtype"] = DTYPES[dtype]
        try:
            model = from_pretrained_reported(auto, path, task, f"model.backbone={backbone!r}", **kwargs)
        except (OSError, ValueError) as err:
            raise type(err)(f"model.backbone={backbone!r} could not be loaded for task {task!r}: {err}") from err
    if task != "causal_lm" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return model
