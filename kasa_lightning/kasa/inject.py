"""Put adapted layers into a model and take them out again.

``apply_adapters`` validates every target first and changes no weight until all of them passed, so a bad
setting never leaves a half-adapted model behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import nn

from . import bank as _bank
from . import bnb
from .config import AdapterConfig
from .layer import AdaptedLayer, is_conv1d, linear_shape
from .quant_source import QuantizedBase, checkpoint_files, quantized_base
from .svd import extreme_triplets
from .targets import resolve_target_modules

if TYPE_CHECKING:
    from .plan import StackingPlan

_RECORD_ATTR = "_kasa_adapter_record"


@dataclass
class AdapterRecord:
    """What ``apply_adapters`` records on a model (read it with ``adapter_record(model)``).

    ``config``: the ``AdapterConfig`` applied. ``requires_grad``: parameter name -> its ``requires_grad`` before
    ``apply_adapters`` (restored by ``unload_adapters`` / ``merge_and_unload``). ``saved``: qualified names of the
    ``modules_to_save`` modules, trained and saved whole. ``layers``: the adapted layers once
    ``cached_adapted_layers`` has found them. ``reg_plan``: the regulariser's stacking plan, a cache of
    ``adapter_loss``. The two caches are dropped with the record; nothing of it is saved in a checkpoint.
    """

    config: AdapterConfig
    requires_grad: dict[str, bool]
    saved: list[str]
    layers: list[tuple[str, AdaptedLayer]] | None = None
    reg_plan: StackingPlan | None = None


def adapter_record(model: nn.Module) -> AdapterRecord:
    """The ``AdapterRecord`` that ``apply_adapters`` stored on ``model``; raises if the model has no adapters."""
    record: AdapterRecord | None = getattr(model, _RECORD_ATTR, None)
    if record is None:
        raise ValueError("this model has no adapters: call apply_adapters(model, config) first")
    return record


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for p in patterns:
        if name == p or name.endswith("." + p):
            return True
        try:
            if re.fullmatch(p, name):
                return True
        except re.error:
            continue
    return False


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _unwrapped_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named modules, skipping the insides of adapted layers."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, AdaptedLayer):
            inside.append(name + ".")
        yield name, module


_WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def unwrapped_name(name: str) -> str:
    """A module or parameter name without the components FSDP, activation checkpointing and torch.compile insert
    (``a._fsdp_wrapped_module.query`` -> ``a.query``): the name the unwrapped model has."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLayer]]:
    """(qualified name, layer) for every adapted layer of ``model``, in module order. Names are those of the
    unwrapped model (see ``unwrapped_name``), also when a strategy has wrapped it."""
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLayer):
            yield unwrapped_name(name), module


def cached_adapted_layers(model: nn.Module) -> list[tuple[str, AdaptedLayer]]:
    """``list(adapted_layers(model))``, found once and kept in the adapter record of ``model`` (the hot path of the
    regulariser: walking every module of a 7B model on every step costs more than the regulariser itself).

    The cache holds the layer modules, not their tensors, so it stays right when a strategy wraps the model (FSDP and
    activation checkpointing wrap the layers, they do not replace them), moves or casts it, or loads a checkpoint into
    it; ``unload_adapters`` and ``merge_and_unload`` drop it with the rest of the adapter record, and
    ``apply_adapters`` starts a new one."""
    record = adapter_record(model)  # raises the usual error when there are no adapters
    layers = record.layers
    if layers is None:
        layers = record.layers = list(adapted_layers(model))
    return layers


def layer_groups(model: nn.Module) -> dict[str, list[tuple[str, AdaptedLayer]]]:
    """Adapted layers grouped by target type, the last component of the name (``query``, ``value``, ``c_attn``),
    each group in module (i.e. depth) order."""
    groups: dict[str, list[tuple[str, AdaptedLayer]]] = {}
    for name, layer in adapted_layers(model):
        groups.setdefault(name.rsplit(".", 1)[-1], []).append((name, layer))
    return groups


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The ``AdapterConfig`` that ``apply_adapters`` used on ``model``."""
    return adapter_record(model).config


def find_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Qualified names of the modules ``config.target_modules`` selects; raises if one is unusable."""
    config = resolve_target_modules(model, config)  # "auto": the architecture's targets
    names, bad = [], []
    for name, module in _unwrapped_modules(model):
        if name and _matches(name, config.target_modules):
            if isinstance(module, AdaptedLayer):
                continue
            if not _is_linear_like(module):
                bad.append(f"{name} ({type(module).__name__})")
                continue
            names.append(name)
    if bad:
        raise TypeError(
            f"target_modules={config.target_modules} matched modules of an unsupported type: {bad}. "
            "Only torch.nn.Linear and transformers Conv1D can be adapted; narrow target_modules to those layers."
        )
    if not names:
        candidates = sorted({n.rsplit(".", 1)[-1] for n, m in _unwrapped_modules(model) if n and _is_linear_like(m)})
        raise ValueError(
            f"target_modules={config.target_modules} matched no layer of {type(model).__name__}. "
            f"Linear layer names in this model: {candidates}"
        )
    return names


def _validate(model: nn.Module, name: str, config: AdapterConfig, initialize: bool = True) -> None:
    module = model.get_submodule(name)
    out_f, in_f = linear_shape(module)  # a quantised layer's own (out, in), not its packed storage's shape
    k = min(out_f, in_f)
    if config.r >= k:
        raise ValueError(
            f"AdapterConfig.r={config.r} is too large for layer {name!r} with weight (out={out_f}, in={in_f}): "
            f"r must be below min(out, in) = {k}. Lower r or leave this layer out of target_modules."
        )
    w = module.weight
    if not w.dtype.is_floating_point and not bnb.is_quantized(module):
        if config.removes_triplets and config.truncation_mode == "fold":
            raise TypeError(
                f"layer {name!r} has a {w.dtype} (integer/quantised) weight, which truncation_mode='fold' cannot "
                "rewrite. Use truncation_mode='lowrank', or load the model in a floating-point dtype."
            )
        if config.removes_triplets:
            raise TypeError(
                f"layer {name!r} has a {w.dtype} weight: its singular triplets need a floating-point weight. "
                "Load the model in float32/bfloat16/float16 or use method='lora'."
            )
    if initialize and w.device.type == "meta" and config.removes_triplets:
        raise ValueError(
            f"layer {name!r} is on the meta device: the truncation needs real weights. "
            "Materialise the model (e.g. load it with from_pretrained) before apply_adapters."
        )


def apply_adapters(
    model: nn.Module,
    config: AdapterConfig,
    *,
    initialize: bool = True,
    svd_device: torch.device | str | None = None,
    progress: bool | None = None,
    stacked: bool = True,
) -> nn.Module:
    """Replace the target layers of ``model`` by ``AdaptedLayer``s, in place, and return ``model``.

    Freezes every parameter except the adapters and ``config.modules_to_save``. With ``initialize=False`` no
    SVD is computed and no weight changes: the layers wait for ``load_adapter_state_dict``. That also works on a
    model on the meta device (no weights), e.g. to count the trainable parameters of a full-size architecture.

    ``svd_device``: compute the truncation there (one weight at a time; e.g. the GPU of a model that is still on
    the CPU, as under FSDP before sharding); by default where each weight lives. ``progress``: a tqdm bar over the
    target weights with the count and the disk-cache hits, on stderr; ``None`` shows it only when stderr is a
    terminal and the method truncates. ``stacked``: store the adapter tensors as a few stacked parameters, one per
    shape group (``stack_adapters``; ``False`` keeps one parameter per tensor, as sharded training needs).
    """
    if getattr(model, _RECORD_ATTR, None) is not None or any(True for _ in adapted_layers(model)):
        raise RuntimeError(
            "this model already has adapters; call unload_adapters(model) first, or apply to a fresh model"
        )
    config = resolve_target_modules(model, config)  # "auto": the architecture's targets, recorded in the state
    targets = find_targets(model, config)
    for name in targets:
        _validate(model, name, config, initialize)
    saved = [
        n for n, _ in _unwrapped_modules(model) if n and config.modules_to_save and _matches(n, config.modules_to_save)
    ]
    if config.modules_to_save and not saved:
        raise ValueError(f"modules_to_save={config.modules_to_save} matched no module of {type(model).__name__}")

    quantized = _quantized_bases(model, targets, config)  # checked before any weight changes
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    which: Literal["minor", "principal"] = "principal" if config.method == "pissa" else "minor"
    truncating = initialize and config.removes_triplets
    bar = _progress_bar(len(targets), config.method, progress if truncating else False)
    hits = 0
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        source = quantized.get(name)
        layer = AdaptedLayer(base, config, quantized=source)
        if initialize:
            triplets = None
            if config.removes_triplets:
                if source is not None:  # (out, in): the original weight as stored, or the dequantised one
                    w = source.source_rows(base)  # streamed from the checkpoint file, or the dequantised weight
                else:
                    w = base.weight.detach()
                    w = w.T if is_conv1d(base) else w  # (out, in)
                if svd_device is not None:
                    w = w.to(svd_device)
                triplets = extreme_triplets(w, config.r, which, cache_dir=config.svd_cache_dir)
                del w  # a dense base weight view or the dequantised copy: gone before the next target
                hits += triplets.cached
            layer.reset_parameters(config, triplets)
        setattr(parent, child, layer)
        if bar is not None:
            bar.set_postfix_str(f"cache hits {hits}", refresh=False)
            bar.update()
    if bar is not None:
        bar.close()

    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapted_layers(model):
        for t in layer.adapter_parameters():  # each layer's own parameters until stack_adapters below
            t.requires_grad_(True)
    for n in saved:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)
    object.__setattr__(model, _RECORD_ATTR, AdapterRecord(config=config, requires_grad=requires_grad, saved=saved))
    if stacked:
        stack_adapters(model)
    return model


def stack_adapters(model: nn.Module) -> nn.Module:
    """Store the adapter tensors of ``model`` as a few stacked parameters, one per (kind, shape, dtype, device)
    group, held by an ``AdapterBank`` at ``model.adapter_bank``; each layer's ``delta_u``/``delta_v``/
    ``delta_sigma`` becomes a view of its group. What ``apply_adapters`` does by default: a training step's
    per-parameter costs (AccumulateGrad, the optimiser's per-tensor work, the regulariser's stacking) are then paid
    per group, not per layer (see ``bank.py``). Values, the state dict and gradients per tensor are unchanged; an
    optimiser built before must be built again (``adapter_parameters(model)``). Idempotent."""
    layers = list(adapted_layers(model))
    if not layers:
        raise ValueError("the model has no adapted layers")
    if _bank.bank_of(layers) is None:
        _bank.stack(model, layers)
        adapter_record(model).reg_plan = None
    return model


def unstack_adapters(model: nn.Module) -> nn.Module:
    """Give every adapted layer its own parameters again (the layout of ``apply_adapters(..., stacked=False)``),
    for strategies that shard or gather parameters per module (FSDP, DeepSpeed ZeRO-3). Idempotent."""
    layers = list(adapted_layers(model))
    _bank.unstack(model, layers)
    record: AdapterRecord | None = getattr(model, _RECORD_ATTR, None)
    if record is not None:
        record.reg_plan = None
    return model


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters of ``model``, to give an optimiser: the stacked group parameters, or every
    layer's own tensors when the adapters are not stacked (``modules_to_save`` not included)."""
    layers = list(adapted_layers(model))
    bank = _bank.bank_of(layers)
    if bank is not None:
        return bank.groups()
    return [cast(nn.Parameter, p) for _, layer in layers for p in layer.adapter_parameters()]


def _quantized_bases(model: nn.Module, targets: list[str], config: AdapterConfig) -> dict[str, QuantizedBase]:
    """A ``QuantizedBase`` for every quantised target (the checkpoint's tensors are checked, not read)."""
    quantized = [name for name in targets if bnb.is_quantized(model.get_submodule(name))]
    if not quantized:
        return {}
    bnb.quiet_bitsandbytes_logs()
    needs_files = config.removes_triplets and config.quantized_source == "original"
    files = checkpoint_files(model) if needs_files else None
    source = config.quantized_source if config.removes_triplets else "dequantized"  # LoRA: the base never changes
    return {name: quantized_base(model.get_submodule(name), name, source, files) for name in quantized}


def _progress_bar(total: int, method: str, enabled: bool | None):  # noqa: ANN202
    """A tqdm bar (Lightning's own progress bar library) over the target weights, or None. ``enabled=None``: tqdm
    decides, showing it only when stderr is a terminal (so never in tests, CI logs or redirected runs)."""
    if enabled is False:
        return None
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=f"{method} truncation",
        unit="weight",
        disable=None if enabled is None else False,
        leave=True,
        dynamic_ncols=True,
    )
    if bar.disable:
        bar.close()
        return None
    return bar


def _forget_adapters(model: nn.Module) -> nn.Module:
    """Restore the trainability recorded by ``apply_adapters`` and drop its bookkeeping."""
    if isinstance(getattr(model, _bank.BANK_NAME, None), _bank.AdapterBank):
        delattr(model, _bank.BANK_NAME)  # the layers are gone (or merged into their base): so is their bank
    record: AdapterRecord | None = getattr(model, _RECORD_ATTR, None)
    if record is not None:
        for n, p in model.named_parameters():
            p.requires_grad_(record.requires_grad.get(n, p.requires_grad))
        object.__delattr__(model, _RECORD_ATTR)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Write every update into its base weight (idempotent); the forward then costs nothing extra."""
    for _, layer in adapted_layers(model):
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo ``merge_adapters`` (idempotent)."""
    for _, layer in adapted_layers(model):
        layer.unmerge()
    return model


def unload_adapters(model: nn.Module) -> nn.Module:
    """Remove the adapters: the original modules with their original weights (and trainability) come back."""
    layers = list(adapted_layers(model))
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.restore_base())
    return _forget_adapters(model)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every update into its base weight and drop the wrappers: a plain model of the original
    architecture whose weights are the adapted ones (for ``save_pretrained`` and any inference stack)."""
    for name, layer in list(adapted_layers(model)):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    return _forget_adapters(model)
