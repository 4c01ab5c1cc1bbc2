"""What ``KaSAModule`` puts into a checkpoint and takes out of it (mixed into the module).

A checkpoint holds what trains (the adapters, ``modules_to_save``; every weight for a ``backbone_config`` model),
the truncation state, the adapter config, the run's settings and limits, the best validation values and every
rank's RNG state. Saving refuses diverged tensors (``divergence``); loading reads weights-only (``checkpoint_io``),
refuses a checkpoint of another structure and keeps the user's other settings (``_resume``), and builds the model
for the checkpoint's tensors without an SVD.
"""

from __future__ import annotations

import contextvars
import random
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod

from kasa_lightning._moved import moved_class_path
from kasa_lightning.kasa import adapted_layers, adapter_state_dict, load_adapter_state_dict
from kasa_lightning.kasa.bank import bank_of
from kasa_lightning.kasa.inject import unwrapped_name
from kasa_lightning.training import checkpoint_io
from kasa_lightning.training._optimizer_layout import stack_optimizer_state
from kasa_lightning.training._resume import (
    changed_settings,
    refusal,
    structural_differences,
    uncount_unfinished_epoch,
    warn_changed,
    warn_changed_limits,
)
from kasa_lightning.training.divergence import DivergedAdaptersError, checkpoint_problem

if TYPE_CHECKING:
    from lightning.pytorch import Trainer
    from lightning.pytorch.core.mixins.hparams_mixin import AttributeDict
    from typing_extensions import Self

    from kasa_lightning.kasa import AdapterConfig

# set while load_from_checkpoint runs: Lightning calls configure_model() before on_load_checkpoint, and the model
# it builds then only has to receive the checkpoint's tensors (no SVD, no initialisation)
LOADING_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar("kasa_loading_checkpoint", default=False)


class CheckpointHost(Protocol):
    """What the checkpoint hooks read from the LightningModule they are mixed into (``KaSAModule``): its settings,
    its model, the two values a checkpoint restores, and the Lightning members and methods they call."""

    adapter_config: AdapterConfig
    backbone_name: str
    backbone_config: Any  # a transformers config (or its dict) when the backbone is built from a config, else None
    max_checkpoint_abs: float
    model: Any  # the Hugging Face model with adapters (an untyped library), None until configure_model
    _full_state: bool  # whether the checkpoint holds every weight (set from the checkpoint being loaded)
    _best: dict[str, float]  # the best validation value per metric so far (kept across a resume)
    _trainer: Trainer | None

    @property
    def hparams(self) -> AttributeDict: ...

    trainer: Trainer

    @property
    def global_step(self) -> int: ...

    def check_finite(self) -> None: ...

    def configure_model(self, initialize: bool = True) -> None: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any: ...


# type checkers see the mixin as an implementation of the host's contract; at run time it is a plain class, so the
# host's own MRO (KaSAModule -> LightningModule) stays the one Lightning expects
if TYPE_CHECKING:
    _Host = CheckpointHost
else:
    _Host = object


class CheckpointMixin(_Host):
    """The checkpoint hooks of ``KaSAModule``; what they read from their host is ``CheckpointHost``."""

    def _refuse_diverged_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before a checkpoint is written: no non-finite loss so far, and no tensor beyond ``max_checkpoint_abs``."""
        self.check_finite()
        problem = checkpoint_problem(checkpoint.get("state_dict", {}), self.max_checkpoint_abs)
        refused = problem is not None
        if self._trainer is not None and self.trainer.world_size > 1:
            refused = self.trainer.strategy.reduce_boolean_decision(refused, all=False)
        if refused:
            raise DivergedAdaptersError(
                f"refusing to save a checkpoint at global step {self.global_step}: "
                f"{problem or 'another process found diverged tensors'} (KaSAModule.max_checkpoint_abs = "
                f"{self.max_checkpoint_abs:g}). Training diverged; lower the learning rate or clip gradients "
                f"(trainer.gradient_clip_val). {self._last_good_checkpoint()}"
            )

    def _last_good_checkpoint(self) -> str:
        io = self.trainer.strategy.checkpoint_io if self._trainer is not None else None
        last = io.last_saved() if isinstance(io, checkpoint_io.AtomicCheckpointIO) else None
        if last is None:
            return "No checkpoint of this run was written before."
        return f"The last good checkpoint is {last[0]} (global step {last[1]}); resume with --ckpt_path {last[0]}."

    @_restricted_classmethod  # as Lightning's: calling it on an instance is an error
    def load_from_checkpoint(  # type: ignore[override]
        cls,  # noqa: N805 (a restricted classmethod)
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's ``load_from_checkpoint``, reading the file with ``weights_only=True`` (local paths, fsspec
        and ``http(s)://`` URLs alike; Lightning would read URLs with ``weights_only=False``). A file that is not a
        checkpoint or that asks to run code raises ``kasa_lightning.training.checkpoint_io.UnsafeCheckpointError``. Pass
        ``weights_only=False`` only for a file you trust. The model is built for the checkpoint's tensors, without
        the SVD and initialisation a new model needs (Lightning calls ``configure_model()`` before loading)."""
        if weights_only is not False:
            name = str(checkpoint_path)
            if isinstance(checkpoint_path, str) and checkpoint_io.is_url(checkpoint_path):
                checkpoint_path = checkpoint_io.read_url(checkpoint_path)  # downloaded once, read twice below
            # read it safely first, so that a bad file gets our message (and never torch's advice to set
            # weights_only=False); Lightning then reads the same bytes, weights-only too
            checkpoint = checkpoint_io.load_checkpoint_safely(checkpoint_path, map_location="cpu", name=name)
            # a checkpoint of the previous layout names its class by the old module path, which Lightning (rightly)
            # refuses to import: name the class where it lives now
            saved_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
            moved = moved_class_path(saved_path) if isinstance(saved_path, str) else None
            if moved is not None:
                kwargs.setdefault("_class_path", moved)
            if hasattr(checkpoint_path, "seek"):
                checkpoint_path.seek(0)
        token = LOADING_CHECKPOINT.set(True)
        try:
            with torch.serialization.safe_globals(checkpoint_io.SAFE_GLOBALS):
                return super().load_from_checkpoint(  # type: ignore[misc]  # LightningModule's, next in the MRO
                    checkpoint_path, map_location, hparams_file, strict, weights_only is not False, **kwargs
                )
        finally:
            LOADING_CHECKPOINT.reset(token)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._keep_trained_state(checkpoint)
        self._refuse_diverged_checkpoint(checkpoint)  # before anything is written
        uncount_unfinished_epoch(self._trainer, checkpoint)
        # the settings as trained (load_from_checkpoint overwrites "hyper_parameters" with its keyword arguments)
        checkpoint["kasa"]["hparams"] = dict(self.hparams)
        if self._trainer is not None:  # the run's limits, to say on resume where they changed
            checkpoint["kasa"]["limits"] = {"max_epochs": self.trainer.max_epochs, "max_steps": self.trainer.max_steps}
        checkpoint["kasa"]["rng_per_rank"] = self._gather_rng_states()  # a collective: every rank is here

    def _keep_trained_state(self, checkpoint: dict[str, Any]) -> None:
        # Keep the adapter entries of the state dict the strategy gathered (under FSDP only it holds full tensors).
        # A from-config backbone has random weights that nothing can rebuild, so its checkpoint keeps them all.
        full = self.backbone_config is not None
        if not full:
            # the strategies gather state dicts under the unwrapped names
            keep = {f"model.{unwrapped_name(k)}" for k in adapter_state_dict(self.model)}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["kasa"] = {
            "full_state": full,
            "adapter": self.adapter_config.to_dict(),
            "backbone": self.backbone_name,
            "model_type": getattr(getattr(self.model, "config", None), "model_type", None),
            "best": dict(self._best),
        }

    def _gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG state, in rank order (every rank writes a checkpoint's contents; rank 0 saves them)."""
        import torch.distributed as dist

        if self._trainer is None or self.trainer.world_size == 1 or not dist.is_initialized():
            return [rng_state()]
        states: list[Any] = [None] * self.trainer.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load a state dict as this module's checkpoints hold it: the adapters and ``modules_to_save`` only
        (nothing of the frozen base, which is not "missing"), or every weight for a ``backbone_config`` model.

        A missing or unexpected adapter tensor, or one of another shape, raises ``ValueError`` whatever
        ``strict`` says: a checkpoint without one of its adapter tensors is broken, not partial. A state dict of
        the whole module (``module.state_dict()``) loads as ``nn.Module.load_state_dict`` would."""
        from torch.nn.modules.module import _IncompatibleKeys

        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        others = sorted(k for k in state_dict if not k.startswith(prefix))
        if self.model is None or others or (state and len(state) == len(self.model.state_dict())):
            return super().load_state_dict(  # type: ignore[safe-super]  # LightningModule's, next in the MRO
                state_dict, strict=strict, assign=assign
            )
        if self._full_state:
            self.model.load_state_dict(state, strict=True)
        else:
            load_adapter_state_dict(self.model, state)
        return _IncompatibleKeys([], [])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint fits this model and build the model for it; ``load_state_dict`` (which
        Lightning calls next, with the checkpoint's state dict) loads the tensors.

        Settings that decide what the saved tensors are (backbone, task, labels, adapter structure) must equal
        the checkpoint's, or this raises; for the others this model's values are kept, with a warning where the
        checkpoint's differ (see ``kasa_lightning.training._resume``)."""
        info = checkpoint.get("kasa")
        if info is None:
            raise ValueError("this checkpoint was not written by KaSAModule (no 'kasa' entry)")
        saved_hparams = dict(info.get("hparams") or {})  # older checkpoints: the adapter and backbone only
        saved_hparams["adapter"] = info["adapter"]  # the config as applied (defaults resolved)
        saved_hparams["backbone"] = info["backbone"]
        mine = dict(self.hparams)
        mine["adapter"] = self.adapter_config.to_dict()
        if "_class_path" not in mine or "_class_path" not in saved_hparams:
            saved_hparams.pop("_class_path", None)
            mine.pop("_class_path", None)
        structural = structural_differences(saved_hparams, mine)
        if structural:
            raise ValueError(refusal(structural))
        if self._trainer is not None and self.trainer.state.fn == "fit":
            warn_changed(changed_settings(saved_hparams, mine))
            warn_changed_limits(info.get("limits") or {}, self.trainer)
        self.configure_model(initialize=False)  # no-op when the Trainer already configured the model
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        if info.get("model_type") != model_type:
            raise ValueError(f"checkpoint is for a {info.get('model_type')!r} model, this one is {model_type!r}")
        self._full_state = bool(info.get("full_state"))
        layers = list(adapted_layers(self.model))
        bank = bank_of(layers)
        if bank is not None:  # optimiser state written with one parameter per adapter tensor: stack it
            for optimizer_state in checkpoint.get("optimizer_states") or []:
                stack_optimizer_state(optimizer_state, layers, bank)
        # without "state_dict", a sharding strategy (FSDP) loads it into the wrapped model (strict_loading=False)
        self._best = dict(info.get("best", {}))
        per_rank = info.get("rng_per_rank") or []
        if per_rank and self._trainer is not None and self.trainer.state.fn == "fit":
            # resume draws the same dropout masks as an uninterrupted run, on every rank (rank 0's state when the
            # number of processes changed)
            same_world = len(per_rank) == self.trainer.world_size
            set_rng_state(per_rank[self.trainer.global_rank if same_world else 0])


def rng_state() -> dict[str, Any]:
    """Torch, Python and NumPy RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
