"""``data.global_batch_size``: the effective batch stays the same on any number of processes.

Without it, adding devices multiplies the effective batch silently (the failure the issue names); with it,
``trainer.accumulate_grad_batches`` is derived before the fit loop starts, and a number of processes that does not
divide the global batch is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import yaml
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning_helpers import MINILM, TINY_BERT, tiny_data, tiny_module

from kasa_lightning.training._batching import accumulation_steps, apply_global_batch_size

ROOT = Path(__file__).resolve().parents[1]


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("global_batch", "batch", "world", "steps"),
    [(16, 4, 1, 4), (16, 4, 2, 2), (16, 4, 4, 1), (32, 32, 1, 1), (8, 2, 2, 2)],
)
def test_accumulation_steps_keep_the_product(global_batch, batch, world, steps):
    assert accumulation_steps(global_batch, batch, world) == steps
    assert batch * world * steps == global_batch


def test_a_number_of_processes_that_does_not_divide_is_refused_with_the_fix():
    with pytest.raises(
        ValueError,
        match=r"data.global_batch_size=16 is not a multiple of data.batch_size=4 x 3 "
        r"process\(es\) = 12.*a number of processes .* that divides 16",
    ):
        accumulation_steps(16, 4, 3)
    with pytest.raises(ValueError, match=r"set data.batch_size to one of \[1, 2\]"):
        accumulation_steps(16, 32, 8)  # 32 per process x 8 > 16: smaller micro-batches divide
    with pytest.raises(ValueError, match="positive multiple of data.batch_size=4"):
        tiny_data(batch_size=4, global_batch_size=6)


def _fake_trainer(world_size: int, accumulate: int = 1, callbacks=()):
    """A stand-in with the attributes ``apply_global_batch_size`` reads (a world size without processes)."""
    return SimpleNamespace(
        datamodule=tiny_data(batch_size=4, global_batch_size=16),
        world_size=world_size,
        accumulate_grad_batches=accumulate,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize(("world", "steps"), [(1, 4), (2, 2), (4, 1)])
def test_accumulation_is_derived_from_the_world_size(world, steps):
    trainer = _fake_trainer(world)
    assert apply_global_batch_size(trainer) == steps and trainer.accumulate_grad_batches == steps


def test_conflicting_settings_are_refused():
    with pytest.raises(ValueError, match=r"trainer.accumulate_grad_batches=3 contradicts data.global_batch_size=16"):
        apply_global_batch_size(_fake_trainer(1, accumulate=3))
    assert apply_global_batch_size(_fake_trainer(1, accumulate=4)) == 4  # the same value, stated twice: fine
    with pytest.raises(ValueError, match="GradientAccumulationScheduler"):
        apply_global_batch_size(_fake_trainer(1, callbacks=[GradientAccumulationScheduler({0: 2})]))
    with pytest.raises(ValueError, match=r"5 process\(es\)"):
        apply_global_batch_size(_fake_trainer(5))


def test_fit_accumulates_to_the_global_batch(tmp_path):
    """A real single-process fit: 32 rows in micro-batches of 2 with a global batch of 8 make 16 micro-batches and
    4 optimiser steps, and the scheduler is sized for those 4 steps."""
    data = tiny_data(train_size=32, batch_size=2, global_batch_size=8)
    trainer = _trainer(default_root_dir=tmp_path)
    trainer.fit(tiny_module(adapter={"r": 2}), datamodule=data)
    assert trainer.accumulate_grad_batches == 4
    assert trainer.global_step == 4 and trainer.estimated_stepping_batches == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4

    plain = _trainer(default_root_dir=tmp_path / "plain")  # without the setting: one step per micro-batch
    plain.fit(tiny_module(adapter={"r": 2}), datamodule=tiny_data(train_size=32, batch_size=2))
    assert plain.accumulate_grad_batches == 1 and plain.global_step == 16


@pytest.mark.slow
def test_ddp_two_processes_keep_the_effective_batch(tmp_path):
    """Two CPU processes through the CLI: the global batch of 8 with micro-batches of 2 needs 2 accumulation steps
    per process; 32 rows make 8 micro-batches per process, i.e. 4 optimiser steps (the checkpoint's step), as in
    the single-process fit above (without the setting, two processes would step 8 times with an effective batch
    of 4: the silent growth this prevents)."""
    data = {"train_size": 32, "val_size": 4, "batch_size": 2, "max_length": 32, "global_batch_size": 8}
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "devices": 2,
            "max_epochs": 1,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 2}},
        },
        "data": {"class_path": "kasa_lightning.datamodules.SentimentDemoDataModule", "init_args": data},
    }
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kasa_lightning",
            "fit",
            "--config",
            str(cfg),
            "--config",
            str(ROOT / "configs/strategies/ddp.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = sorted(p.name for p in (tmp_path / "run").rglob("*.ckpt") if p.name != "last.ckpt")
    assert steps == ["epoch=0-step=4.ckpt"]
