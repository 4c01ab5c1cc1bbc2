"""Building the Hugging Face model a ``KaSAModule`` adapts: a Hub name, a local directory or ``pkg://`` (through
``kasa_lightning.hub``), or a config with random weights; the auto class follows the task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kasa_lightning.hub import resolve_pretrained
from kasa_lightning.training._load_report import from_pretrained_reported

if TYPE_CHECKING:
    from kasa_lightning.kasa import QuantizationConfig

#: the refusal of ``model.quantization`` together with ``model.backbone_config``
QUANTIZED_NEEDS_PRETRAINED = (
    "model.quantization needs pretrained weights loaded with from_pretrained, but model.backbone_config builds the "
    "backbone with random weights (nothing to quantise from, and KaSA reads the original weights from the checkpoint "
    "files); remove model.backbone_config, or set model.quantization to null"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_backbone(
    backbone: str,
    task: str,
    num_labels: int,
    backbone_config: dict[str, Any] | None = None,
    dtype: str | None = None,
    quantization: QuantizationConfig | None = None,
    keep_unquantized: list[str] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The model for ``task`` (``AutoModelForCausalLM`` or ``AutoModelForSequenceClassification``): from
    ``backbone_config`` (``{"model_type": ..., ...}``, random weights) when given, else ``from_pretrained(backbone)``;
    in ``dtype`` (a key of ``DTYPES``) when given. Errors name the ``model.*`` setting.

    ``quantization``: load the linear layers quantised by bitsandbytes (``from_pretrained`` with transformers'
    ``BitsAndBytesConfig``), except the output head and ``keep_unquantized`` (the ``modules_to_save``, which train
    whole), on ``device`` (the CPU by default): bitsandbytes quantises while the weights move there."""
    if quantization is not None:
        # before transformers imports bitsandbytes: no Hub kernel lookup, no repeated notices
        from kasa_lightning.kasa import import_bitsandbytes

        import_bitsandbytes()
    import transformers

    auto = (
        transformers.AutoModelForCausalLM if task == "causal_lm" else (transformers.AutoModelForSequenceClassification)
    )
    kwargs: dict[str, Any] = {}
    if task != "causal_lm":
        kwargs["num_labels"] = num_labels
        if task == "regression":
            kwargs["problem_type"] = "regression"
    if backbone_config is not None and quantization is not None:
        raise ValueError(QUANTIZED_NEEDS_PRETRAINED)
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
        if quantization is not None:
            kwargs.update(_quantized_loading(quantization, keep_unquantized or [], device))
        try:
            model = from_pretrained_reported(auto, path, task, f"model.backbone={backbone!r}", **kwargs)
        except (OSError, ValueError) as err:
            raise type(err)(f"model.backbone={backbone!r} could not be loaded for task {task!r}: {err}") from err
    if task != "causal_lm" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return model


# heads that transformers leaves unquantised by default (it skips the output embedding and the last module); named
# here because passing any skip list replaces transformers' default one
_HEADS = ("lm_head", "score", "classifier")


def _quantized_loading(
    quantization: QuantizationConfig, keep_unquantized: list[str], device: torch.device | str | None
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a bitsandbytes-quantised load onto one device."""
    config = quantization.to_bitsandbytes_config()
    config.llm_int8_skip_modules = sorted({*_HEADS, *keep_unquantized})
    target = torch.device(device) if device is not None else torch.device("cpu")
    index = target.index if target.type == "cuda" and target.index is not None else None
    return {
        "quantization_config": config,
        # one device: bitsandbytes quantises each weight as it is placed there (the CUDA kernels need CUDA tensors)
        "device_map": {"": index if index is not None else str(target)},
    }
