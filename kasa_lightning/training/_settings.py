"""The checks and normalisations of ``KaSAModule``'s settings, run in ``__init__`` before anything is built: a bad
value is refused with the setting's name as the user writes it (``model.<name>``) and what to write instead."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kasa_lightning.kasa import AdapterConfig, QuantizationConfig
from kasa_lightning.training._backbone import QUANTIZED_NEEDS_PRETRAINED

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

_COMPILE_KEYS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")


def compile_kwargs(value: Any) -> dict[str, Any] | None:
    """``KaSAModule(compile=...)`` as keyword arguments of ``torch.compile`` (None: do not compile)."""
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(_COMPILE_KEYS))
        if unknown:
            raise ValueError(f"model.compile has unknown keys {unknown}: use torch.compile's {list(_COMPILE_KEYS)}")
        return dict(value)
    raise TypeError(f"model.compile={value!r}: use true/false or a dict of torch.compile arguments")


def check_settings(
    task: str, num_labels: int, warmup_ratio: float, warmup_steps: int | None, schedule: str, label_smoothing: float
) -> None:
    """Refuse settings that cannot work, naming them as the user writes them, before anything is built."""
    if task not in ("classification", "regression", "causal_lm"):
        raise ValueError(f"model.task={task!r}: choose 'classification', 'regression' or 'causal_lm'")
    if task == "regression" and num_labels != 1:
        raise ValueError(f"model.num_labels={num_labels} with task='regression': regression needs num_labels=1")
    if task == "classification" and num_labels < 2:
        raise ValueError(f"model.num_labels={num_labels}: classification needs >= 2 labels (1 is regression)")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"model.warmup_ratio={warmup_ratio} must be in [0, 1)")
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"model.schedule={schedule!r}: choose 'linear' or 'cosine'")
    if warmup_steps is not None and warmup_steps < 0:
        raise ValueError(f"model.warmup_steps={warmup_steps} must be >= 0")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"model.label_smoothing={label_smoothing} must be in [0, 1)")


def adapter_config_for(adapter: AdapterConfig | dict[str, Any] | None, task: str) -> AdapterConfig:
    """The ``AdapterConfig`` to apply: a dict as stored in hparams.yaml / checkpoints is read back; a classifier's
    head trains whole unless ``modules_to_save`` says otherwise."""
    if isinstance(adapter, dict):
        adapter = AdapterConfig.from_dict(adapter)
    adapter = adapter if adapter is not None else AdapterConfig()
    if task != "causal_lm" and not adapter.modules_to_save:
        adapter = AdapterConfig.from_dict({**adapter.to_dict(), "modules_to_save": ["classifier", "score"]})
    return adapter


def quantization_config_for(
    quantization: QuantizationConfig | dict[str, Any] | None, backbone_config: dict[str, Any] | None
) -> QuantizationConfig | None:
    """``model.quantization`` as a ``QuantizationConfig`` (a dict as stored in hparams.yaml / checkpoints is read
    back); refused with ``model.backbone_config``, whose random weights have no checkpoint to quantise from."""
    if isinstance(quantization, dict):
        quantization = QuantizationConfig(**quantization)
    if quantization is not None and backbone_config is not None:
        raise ValueError(QUANTIZED_NEEDS_PRETRAINED)
    return quantization


def check_quantized_strategy(trainer: Trainer, quantization: QuantizationConfig | None) -> None:
    """Refuse the Trainer settings a bitsandbytes base cannot run under, naming both settings and the reason."""
    if quantization is None:
        return
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"trainer.strategy={type(strategy).__name__} with model.quantization is not supported: a bitsandbytes "
            "layer keeps its quantisation constants (absmax, code book) in a QuantState beside the packed weight, "
            "which sharding flattens into a plain tensor and loses, and KaSA's truncation rewrites whole quantised "
            "layers. Train a quantised base on one device or with DDP (configs/strategies/ddp.yaml), or drop "
            "model.quantization to shard the full-precision model"
        )
    precision = str(trainer.precision)
    cast_to = {"bf16-true": "bfloat16", "16-true": "float16"}.get(precision)
    if cast_to is not None and quantization.quant_storage not in ("uint8", cast_to):
        raise ValueError(
            f"trainer.precision={precision!r} casts every floating-point tensor to {cast_to}, which would convert "
            f"the 4-bit codes packed in model.quantization.quant_storage={quantization.quant_storage!r} as numbers "
            f"and destroy them; use quant_storage 'uint8' (or {cast_to!r}), or trainer.precision 'bf16-mixed'"
        )
