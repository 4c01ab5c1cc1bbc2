"""``last.ckpt`` is written at the end of every training epoch (a crash after an epoch that did not improve the
monitored metric resumes after that epoch), and a mid-epoch resume with our sampler does not print Lightning's
"your dataloader is not resumable" warning (the resume is exact)."""

from __future__ import annotations

import shutil
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_helpers import tiny_data, tiny_module, trainer

from kasa_lightning import AdapterConfig, adapter_state_dict


class ConstantMetric(L.Callback):
    """Logs ``val/const`` = 1 every validation: only the first epoch "improves" it."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        pl_module.log("val/const", 1.0)


class KeepLastAtEpochStart(L.Callback):
    """Copies ``last.ckpt`` at the start of every epoch after the first (what a kill -9 then would leave)."""

    def __init__(self, root) -> None:  # noqa: ANN001
        self.root = root

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch > 0:
            shutil.copy(self.root / "last.ckpt", self.root / f"at_epoch{trainer.current_epoch}.ckpt")


class CountBatches(L.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_start(self, *_) -> None:  # noqa: ANN002
        self.count += 1


def _constant(optimizer):  # noqa: ANN001, ANN202
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _fit(root, *callbacks, ckpt_path=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    """40 samples in batches of 8: 5 steps an epoch; checkpoints monitor a metric that never improves again."""
    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=root, monitor="val/const", mode="max", save_last=True)
    count = CountBatches()
    t = trainer(root, callbacks=[ConstantMetric(), *callbacks, count, ckpt], **kwargs)
    module = tiny_module(adapter=AdapterConfig(r=4), lr_scheduler=_constant)
    t.fit(module, tiny_data(), ckpt_path=ckpt_path)
    if ckpt_path is None and "max_steps" not in kwargs:  # the one improving epoch still gets its top-k save
        assert ckpt.best_model_path.endswith("epoch=0-step=5.ckpt"), ckpt.best_model_path
    return {k: v.detach().clone() for k, v in adapter_state_dict(module.model).items()}, count.count


def test_last_ckpt_at_every_epoch_end_so_a_crash_does_not_repeat_an_epoch(tmp_path):
    """Old code: after epochs 1 and 2 (no improvement) last.ckpt still held step 5 (epoch 0's end): a run killed
    in epoch 2 trained epochs 1 and 2 again on resume."""
    root = tmp_path / "run"
    straight, _ = _fit(root, KeepLastAtEpochStart(root), max_epochs=3)
    for epoch in (1, 2):
        saved = torch.load(root / f"at_epoch{epoch}.ckpt", weights_only=True)
        assert saved["global_step"] == 5 * epoch, epoch
    # a kill -9 during epoch 2: resume from what last.ckpt was then; only epoch 2 is trained again
    resumed, batches = _fit(tmp_path / "resumed", ckpt_path=root / "at_epoch2.ckpt", max_epochs=3)
    assert batches == 5
    assert torch.load(tmp_path / "resumed/last.ckpt", weights_only=True)["global_step"] == 15
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=0, msg=k)


def test_mid_epoch_resume_does_not_warn_that_the_dataloader_is_not_resumable(tmp_path):
    """Old code: Lightning's PossibleUserWarning "... your dataloader is not resumable ..." on every such resume."""
    _fit(tmp_path, max_epochs=1, max_steps=3)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, batches = _fit(tmp_path, ckpt_path=tmp_path / "last.ckpt", max_epochs=1)
    assert batches == 2
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "not resumable" in m], messages
