"""SIGTERM (what a cluster scheduler sends before it kills a job) saves a resumable checkpoint of
the current step and exits non-zero; resuming from it ends with the adapters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning_helpers import MINILM, TINY_BERT

from kasa_lightning.cli import main
from kasa_lightning.training._stop import SIGTERM_EXIT_STATUS


def _config(root: Path, extra_callbacks: list | None = None) -> dict:
    """The quickstart's layout (monitor + save_last) on a tiny BERT: 40 samples of 8, 5 steps an epoch, 2 epochs."""
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"monitor": "val/accuracy", "mode": "max", "save_last": True},
        }
    ]
    return {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks + (extra_callbacks or []),
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 4, "dropout": 0.1}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 40, "val_size": 8, "batch_size": 8, "max_length": 32},
        },
    }


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _last(root: Path, version: int) -> Path:
    return root / f"lightning_logs/version_{version}/checkpoints/last.ckpt"


def test_sigterm_saves_the_current_step_exits_nonzero_and_resumes_exactly(tmp_path, monkeypatch):
    """Old code: the process exited with status 0 and last.ckpt did not exist (no epoch had ended)."""
    monkeypatch.chdir(tmp_path)
    stop_at = 3  # mid-epoch 0
    straight = _write(tmp_path / "straight.yaml", _config(tmp_path / "straight"))
    main(["fit", "--config", str(straight)])

    marker = tmp_path / "at_step"
    pause = {
        "class_path": "lightning_helpers.PauseForSignal",
        "init_args": {"step": stop_at, "marker": str(marker), "timeout": 60},
    }
    cut = _write(tmp_path / "cut.yaml", _config(tmp_path / "cut", [pause]))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the same arithmetic as this process
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(cut)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the fit never reached step {stop_at}: {proc.poll()=}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == SIGTERM_EXIT_STATUS, err[-3000:]
    assert f"SIGTERM at global step {stop_at}" in err
    saved = torch.load(_last(tmp_path / "cut", 0), weights_only=False)
    assert saved["global_step"] == stop_at
    assert saved["SentimentDemoDataModule"]["batches"] == stop_at

    main(
        [
            "fit",
            "--config",
            str(_write(tmp_path / "resume.yaml", _config(tmp_path / "cut"))),
            "--ckpt_path",
            str(_last(tmp_path / "cut", 0)),
        ]
    )
    a = torch.load(_last(tmp_path / "straight", 0), weights_only=False)
    b = torch.load(_last(tmp_path / "cut", 1), weights_only=False)
    assert a["global_step"] == b["global_step"] == 10
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, atol=1e-6, rtol=0, msg=k)


def _fit_until_sigterm(tmp_path: Path, config: Path, marker: Path) -> str:
    """Run ``fit --config config`` in a subprocess, send SIGTERM once ``marker`` exists; returns its stderr."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the fit never reached the marked point: {proc.poll()=}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == SIGTERM_EXIT_STATUS, err[-3000:]
    return err


def test_sigterm_during_validation_validates_that_epoch_on_resume(tmp_path, monkeypatch):
    """SIGTERM in the middle of epoch 0's validation: the resumed run validates epoch 0 completely (the metrics
    file lists epoch 0 with the values of an uninterrupted run). Old code: the resumed run skipped epoch 0's
    validation, so metrics.json listed no epoch and the best epoch could be wrong."""
    import json

    monkeypatch.chdir(tmp_path)

    def config(root: Path, extra: list | None = None) -> Path:
        cfg = _config(tmp_path / root, extra)
        cfg["trainer"]["max_epochs"] = 1
        cfg["data"]["init_args"]["val_size"] = 64  # 8 validation batches
        return _write(tmp_path / f"{root}-{len(extra or [])}.yaml", cfg)

    main(["fit", "--config", str(config(Path("straight")))])

    marker = tmp_path / "in_validation"
    pause = {
        "class_path": "lightning_helpers.PauseInValidation",
        "init_args": {"epoch": 0, "batch": 3, "marker": str(marker), "timeout": 60},
    }
    err = _fit_until_sigterm(tmp_path, config(Path("cut"), [pause]), marker)

    main(["fit", "--config", str(config(Path("cut"))), "--ckpt_path", str(_last(tmp_path / "cut", 0))])

    a = json.loads((tmp_path / "straight/lightning_logs/version_0/metrics.json").read_text())["fit"]
    b = json.loads((tmp_path / "cut/lightning_logs/version_1/metrics.json").read_text())["fit"]
    assert [(e["epoch"], e["step"]) for e in b["epochs"]] == [(e["epoch"], e["step"]) for e in a["epochs"]] == [(0, 5)]
    for ea, eb in zip(a["epochs"], b["epochs"]):
        for key, value in ea["metrics"].items():
            assert eb["metrics"][key] == pytest.approx(value, abs=1e-6), (ea["epoch"], key)
    assert b["best_model_path"].endswith(Path(a["best_model_path"]).name)
    assert "SIGTERM at global step 5 during validation" in err, err[-2000:]
    # the resumed run's own checkpoint is an ordinary one: a later resume does not validate again
    progress = torch.load(_last(tmp_path / "cut", 1), weights_only=False)["loops"]["fit_loop"]
    total = progress["epoch_loop.val_loop.batch_progress"]["total"]
    assert total == {"ready": 8, "started": 8, "processed": 8, "completed": 8}
