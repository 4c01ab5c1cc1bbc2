"""FSDP (v1) for adapted models: a wrap policy that keeps frozen and trainable parameters apart, and gathering
the adapter tensors for reading.

`AdapterWrapPolicy`: an FSDP auto-wrap policy that never puts frozen and trainable parameters in one unit.

FSDP (v1) flattens the parameters of each wrapped unit into one flat parameter. With ``use_orig_params=True``
(Lightning's default) a unit may mix frozen and trainable tensors, but then gradient memory is allocated for the
whole flat parameter, frozen part included, and FSDP warns about it. This policy wraps, besides the blocks you
name (e.g. ``LlamaDecoderLayer``):

* every ``AdaptedLayer`` (its own tensors: delta_u, delta_sigma, delta_v, all trainable) and, separately, its
  ``base_layer`` (the frozen, truncated weight);
* every other module with trainable parameters of its own (``modules_to_save``: the classification head).

So each flat parameter is either entirely trainable or entirely frozen. Pure PyTorch: a ``ModuleWrapPolicy``
(the policy type Lightning's ``FSDPStrategy(auto_wrap_policy=...)`` accepts from a config) with more units.

`gathered_adapters(root)`: a context in which the adapter tensors are whole, for callbacks that read them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from kasa_lightning.kasa import AdaptedLayer, AdapterBank


class AdapterWrapPolicy(ModuleWrapPolicy):
    """Wrap ``module_classes`` (transformer blocks), each adapted layer, its base layer, and each module with
    trainable parameters of its own, as separate FSDP units."""

    def __init__(self, module_classes: Iterable[type[nn.Module]] = ()) -> None:
        self.module_classes = tuple(module_classes)
        super().__init__(self.module_classes)

    def units(self, root: nn.Module) -> list[nn.Module]:
        """The modules this policy wraps under ``root`` (root itself excluded: FSDP always wraps the root)."""
        if any(isinstance(m, AdapterBank) for m in root.modules()):
            raise ValueError(
                "AdapterWrapPolicy: the adapters of this model are stacked into one parameter per shape group "
                "(apply_adapters' default), which FSDP would shard as a unit that never runs a forward pass; apply "
                "them with apply_adapters(..., stacked=False) or call kasa.unstack_adapters(model) before wrapping "
                "(KaSAModule does this under sharding strategies)"
            )
        units: list[nn.Module] = []
        for module in root.modules():
            if module is root:
                continue
            if isinstance(module, AdaptedLayer):
                units += [module, module.base_layer]
            elif isinstance(module, self.module_classes) or any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                units.append(module)
        return units

    def _run_policy(
        self, root_module: nn.Module, ignored_modules: set[nn.Module], root_kwargs: dict[str, Any]
    ) -> dict[nn.Module, dict[str, Any]]:
        return {m: copy.copy(root_kwargs) for m in self.units(root_module) if m not in ignored_modules}


@contextlib.contextmanager
def gathered_adapters(root: FSDP) -> Iterator[None]:
    """Inside, rank 0 sees every ``AdaptedLayer``'s tensors whole (read-only). Only the innermost unit holding each
    adapted layer is gathered, without recursion: with ``AdapterWrapPolicy`` the adapters alone, not the frozen
    base. From a GPU the tensors go to rank 0's CPU memory; on CPU processes every rank gathers (copying from
    the CPU to the CPU is not supported). A collective: every rank must enter."""
    owners: dict[int, FSDP] = {}  # each adapted layer -> the innermost unit that holds its tensors
    for unit in FSDP.fsdp_modules(root):  # outer units come before the units nested in them
        for module in unit.module.modules():
            if isinstance(module, AdaptedLayer):
                owners[id(module)] = unit
    units = list({id(u): u for u in owners.values()}.values())  # module order: the same on every rank
    offload = root.compute_device is not None and root.compute_device.type != "cpu"
    with contextlib.ExitStack() as stack:
        for unit in units:
            stack.enter_context(
                FSDP.summon_full_params(
                    unit, recurse=False, writeback=False, rank0_only=offload, offload_to_cpu=offload
                )
            )
        yield


def shards_parameters(strategy: Any) -> bool:
    """Whether ``strategy`` shards parameters across processes (FSDP, FSDP2 via ModelParallel, DeepSpeed)."""
    from lightning.pytorch.strategies import (
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
    )

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))


def refuse_sharded_checkpoints(strategy: Any) -> None:
    """Refuse FSDP's sharded checkpoints (``state_dict_type="sharded"``) for training, naming the setting.

    A sharded checkpoint is a folder that every rank writes with ``torch.distributed.checkpoint``, past the
    CheckpointIO plugin that writes every other checkpoint atomically (``checkpoint_io``): Lightning first deletes
    the folder it replaces, then the ranks write into it, so a kill or a full disk during the write leaves a partial
    folder under the checkpoint's name (``last.ckpt`` included) and no earlier state to resume from. A folder
    cannot be swapped in with one atomic rename over an existing one. The full state dict costs little here: the
    checkpoints hold the adapters and ``modules_to_save`` only.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "full") == "sharded":
        raise ValueError(
            "trainer.strategy.init_args.state_dict_type='sharded' is not supported: FSDP's sharded checkpoints are "
            "folders written by every rank with torch.distributed.checkpoint, not atomically (a run killed during "
            "a write leaves a partial checkpoint folder, last.ckpt included, and nothing to resume from). Set "
            "--trainer.strategy.init_args.state_dict_type full (as configs/strategies/fsdp.yaml does): the "
            "checkpoints hold only the adapters, so the full state dict is small."
        )
