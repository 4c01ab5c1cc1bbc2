"""What a successful ``fit`` prints, in a real subprocess of the quickstart at tiny sizes: no transformers LOAD REPORT
table for the new head (one line of ours instead), and a last line with the best metric and epoch, the checkpoint
and export paths and the TensorBoard command, checked against the files the run wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_ends_with_one_summary_line(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "kasa_lightning",
        "fit",
        "--config",
        str(ROOT / "configs/quickstart.yaml"),
        "--trainer.default_root_dir",
        str(run),
        "--data.init_args.train_size",
        "64",
        "--data.init_args.val_size",
        "32",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "LOAD REPORT" not in output and "MISSING" not in output
    head_lines = [line for line in output.splitlines() if "new classification head, initialised randomly" in line]
    assert len(head_lines) == 2  # the fit's backbone and the export's reload of the best checkpoint

    last = proc.stdout.strip().splitlines()[-1]
    version = run / "lightning_logs" / "version_0"
    fit = json.loads((version / "metrics.json").read_text())["fit"]
    scores = [e["metrics"]["val/accuracy"] for e in fit["epochs"]]
    best_index = scores.index(max(scores))  # ModelCheckpoint keeps the first of equal maxima
    best = fit["epochs"][best_index]
    expected_head = f"fit done: best val/accuracy {max(scores):.4f} at epoch {best['epoch']} (step {best['step']})"
    assert last.startswith(expected_head + " | "), last
    parts = dict(part.split(": ", 1) for part in last.split(" | ")[1:-1])
    assert parts["checkpoints"] == f"best {fit['best_model_path']}, last {fit['last_model_path']}"
    assert Path(fit["best_model_path"]).is_file() and Path(fit["last_model_path"]).is_file()
    assert parts["exported"] == f"{version}/export/best/peft-lora, {version}/export/best/adapter"
    assert (version / "export/best/peft-lora/adapter_config.json").is_file()
    assert parts["metrics"] == str(version / "metrics.json")
    assert re.fullmatch(rf"tensorboard --logdir {re.escape(str(version))}", last.split(" | ")[-1])
    assert len(list(version.glob("events.out.tfevents.*"))) == 1
