"""Ctrl-C during ``fit`` is handled like SIGTERM: the current step's ``last.ckpt`` is written, the resume command is
printed and the exit status is 130. Old code: Lightning's "attempting graceful shutdown", status 1, and only the last
epoch-end checkpoint (none here: the signal comes mid-epoch 0)."""

from __future__ import annotations

import json
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

from kasa_lightning.training._stop import SIGINT_EXIT_STATUS

TESTS = Path(__file__).resolve().parent


def _config(root: Path, extra_callbacks: list) -> dict:
    """The quickstart's checkpoint layout on a tiny BERT: 40 samples of 8, 5 steps an epoch, 2 epochs."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val/accuracy", "mode": "max", "save_last": True},
    }
    return {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [checkpoint, *extra_callbacks],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 4}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 40, "val_size": 8, "batch_size": 8, "max_length": 32},
        },
    }


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def test_ctrl_c_during_fit_saves_the_current_step_and_exits_130(tmp_path):
    stop_at = 3  # mid-epoch 0
    marker = tmp_path / "at_step"
    pause = {
        "class_path": "lightning_helpers.PauseForSignal",
        "init_args": {"step": stop_at, "marker": str(marker), "timeout": 60},
    }
    config = tmp_path / "cut.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "cut", [pause])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(config)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the fit never reached step {stop_at}: {proc.poll()=}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == SIGINT_EXIT_STATUS == 130, err[-3000:]
    last = tmp_path / "cut/lightning_logs/version_0/checkpoints/last.ckpt"
    assert f"Ctrl-C (SIGINT) at global step {stop_at}: saved {last}" in err, err[-3000:]
    assert f"Resume with: fit ... --ckpt_path {last}" in err
    assert "KeyboardInterrupt" not in err
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == stop_at
    assert saved["SentimentDemoDataModule"]["batches"] == stop_at


@pytest.mark.slow
def test_ctrl_c_to_a_sweeps_process_group_marks_the_run_interrupted_and_a_rerun_resumes(tmp_path):
    """Old code: a raw KeyboardInterrupt traceback from the sweep, status.json left at "running", and the training
    process aborted without saving its step."""
    marker = tmp_path / "at_step"
    pause = {
        "class_path": "lightning_helpers.PauseForSignal",
        "init_args": {"step": 2, "marker": str(marker), "timeout": 60},
    }
    config = _config(tmp_path / "unused", [pause])
    config["trainer"].pop("default_root_dir")
    config["trainer"].update({"max_epochs": 1, "logger": False, "num_sanity_val_steps": 0})
    config["data"]["init_args"].update({"train_size": 32, "val_size": 8})  # 4 steps
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "kasa_lightning", "sweep", "--config", str(tmp_path / "tiny.yaml")]
    cmd += ["--seeds", "0", "--methods", "kasa", "--output_dir", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the fit never reached step 2: {proc.poll()=}"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the sweep and its training process
        stdout, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    run = out / "tiny/kasa/seed0"
    assert proc.returncode == 130, stdout[-2000:] + err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "Rerun the same sweep command to resume" in err
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 2
    fit_log = (run / "fit.log").read_text()
    assert "at global step 2: saved" in fit_log, fit_log[-3000:]

    resumed = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    fit_log = (run / "fit.log").read_text()
    assert fit_log.count("\n$ ") == 2 and "--ckpt_path" in fit_log.split("\n$ ")[-1].splitlines()[0]
    assert json.loads((run / "metrics.json").read_text())["fit"]["global_step"] == 4
