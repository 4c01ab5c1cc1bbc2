"""``fit --ckpt_path last`` resumes the newest ``last.ckpt`` under ``trainer.default_root_dir`` (earlier
``lightning_logs/version_*`` folders included), or refuses; it never starts from step 0."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from lightning_helpers import MINILM, TINY_BERT

from kasa_lightning.cli import main
from kasa_lightning.training._last_checkpoint import find_last_checkpoints


def _config(root: Path, max_steps: int, start_file: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                {"class_path": "lightning_helpers.RecordStartStep", "init_args": {"path": str(start_file)}},
            ],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 4}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 64, "val_size": 8, "batch_size": 8, "max_length": 32},
        },
    }
    path = root.parent / f"{root.name}-{max_steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_find_last_checkpoints_newest_first_and_only_last_files(tmp_path):
    old = _touch(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", 1_000)
    new = _touch(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt", 3_000)
    mid = _touch(tmp_path / "lightning_logs/version_2/checkpoints/last-v1.ckpt", 2_000)
    sigterm = _touch(tmp_path / "last.ckpt", 500)  # SIGTERM without a ModelCheckpoint writes here
    _touch(tmp_path / "lightning_logs/version_1/checkpoints/best-epoch=0-step=8.ckpt", 9_000)
    _touch(tmp_path / "lightning_logs/version_1/checkpoints/.last.ckpt.tmp123", 9_000)  # an atomic write's temporary
    (tmp_path / "lightning_logs/version_3/checkpoints/last.ckpt").mkdir(parents=True)  # not a file
    elsewhere = _touch(tmp_path.parent / f"{tmp_path.name}-ckpts/last.ckpt", 4_000)
    assert find_last_checkpoints(tmp_path) == [new, mid, old, sigterm]
    assert find_last_checkpoints(tmp_path, [elsewhere.parent]) == [elsewhere, new, mid, old, sigterm]
    assert find_last_checkpoints(tmp_path / "missing") == []


def test_fit_ckpt_path_last_resumes_the_newest_last_of_earlier_runs(tmp_path, capsys):
    root, start = tmp_path / "root", tmp_path / "start_step"
    main(["fit", "--config", str(_config(root, 2, start))])  # version_0: last.ckpt of step 2
    main(["fit", "--config", str(_config(root, 3, start))])  # version_1: a new run, last.ckpt of step 3
    assert start.read_text() == "0"
    capsys.readouterr()

    main(["fit", "--config", str(_config(root, 5, start)), "--ckpt_path", "last"])  # version_2
    newest = root / "lightning_logs/version_1/checkpoints/last.ckpt"
    assert start.read_text() == "3"  # Lightning alone: 0 (a new run from step 0, exit status 0)
    err = capsys.readouterr().err
    assert f"--ckpt_path last: using {newest}" in err
    assert str(root / "lightning_logs/version_0/checkpoints/last.ckpt") in err  # the older candidate is named
    assert torch.load(root / "lightning_logs/version_2/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5


def test_fit_ckpt_path_last_without_any_last_checkpoint_is_refused(tmp_path):
    root, start = tmp_path / "root", tmp_path / "start_step"
    (root / "lightning_logs/version_0/checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last.ckpt under trainer.default_root_dir"):
        main(["fit", "--config", str(_config(root, 2, start)), "--ckpt_path", "last"])
    assert not start.exists()  # nothing was trained
