"""The checks and normalisations of ``KaSAModule``'s settings, run in ``__init__`` before anything is built: a bad
value is refused with the setting's name as the user writes it (``model.<name>``) and what to write instead."""

from __future__ import annotations

from typing import Any

from kasa_lightning.kasa import AdapterConfig

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
