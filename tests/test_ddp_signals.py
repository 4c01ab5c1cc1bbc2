"""SIGTERM under DDP (2 CPU processes, gloo), sent the way a scheduler sends it: to every process of the job.

The fit is a real ``python -m kasa_lightning fit --trainer.devices 2`` subprocess (Lightning's launcher, which starts
rank 1 as a child). Slurm's time limit or ``scancel`` signals every process of the job step, so the test signals
the whole process group: the launcher (rank 0) and rank 1. Both ranks must stop at the same step, write one
``last.ckpt`` holding both ranks' RNG states, exit with status 143, and the resumed run must end with the
adapters of an uninterrupted 2-process run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning_helpers import MINILM, TINY_BERT

from kasa_lightning.training._stop import SIGTERM_EXIT_STATUS

TESTS = Path(__file__).resolve().parent
STOP_AT = 2  # of 4 steps: mid-epoch


DDP = {"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"timeout": "0:02:00"}}


def _config(root: Path, extra_callbacks: list | None = None, strategy: dict = DDP, backbone: str | None = None) -> dict:
    """32 rows in batches of 4 on 2 processes: 4 steps, one epoch (max_steps); dropout on (every rank's RNG must be
    restored). ``backbone``: a saved model folder instead of the tiny BERT built from its config."""
    model = {"backbone": MINILM, "backbone_config": TINY_BERT} if backbone is None else {"backbone": backbone}
    return {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 2,
            "strategy": strategy,
            "max_steps": 4,  # FSDP resumed mid-epoch under max_epochs ends off (see docs/reliability.md)
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                *(extra_callbacks or []),
            ],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {**model, "adapter": {"r": 2, "dropout": 0.1}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 32, "val_size": 4, "batch_size": 4, "max_length": 32},
        },
    }


def _start(tmp_path: Path, name: str, config: dict, ckpt_path: Path | None = None) -> subprocess.Popen:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(cfg)]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", str(ckpt_path)]
    env = {k: v for k, v in os.environ.items() if k not in {"LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"}}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the launcher and the rank it starts
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    return err


def _last(root: Path, version: int = 0) -> dict:
    return torch.load(root / f"lightning_logs/version_{version}/checkpoints/last.ckpt", weights_only=True)


def test_sigterm_to_every_ddp_process_saves_the_step_exits_143_and_resumes_exactly(tmp_path):
    check_sigterm_to_every_process(tmp_path, DDP)


def check_sigterm_to_every_process(tmp_path: Path, strategy: dict, backbone: str | None = None) -> None:
    """SIGTERM to the process group of a 2-process fit at step 2 of 4 (rank 0 leaving 6 s after rank 1): status 143,
    both ranks stopped there, one last.ckpt with both RNG states, and its resume equals the uninterrupted run."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    marks = tmp_path / "marks"
    marks.mkdir()
    pause = [
        {
            "class_path": "lightning_helpers.PauseForSignal",
            "init_args": {"step": STOP_AT, "marker": str(marks / "rank"), "timeout": 60, "per_rank": True},
        },
        # rank 0 leaves 6 s after rank 1: longer than the launcher's watch over its children (every 5 s), which
        # kills the launcher (SIGKILL, status -9) when it sees a child that ended with a non-zero status
        {"class_path": "lightning_helpers.RecordStop", "init_args": {"directory": str(marks), "linger_rank0": 6.0}},
    ]
    reference = _start(tmp_path, "straight", _config(straight, strategy=strategy, backbone=backbone))
    proc = _start(tmp_path, "cut", _config(cut, pause, strategy=strategy, backbone=backbone))
    try:
        deadline = time.monotonic() + 180
        while len(list(marks.glob("rank*.waiting"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(list(marks.glob("rank*.waiting"))) == 2, f"the ranks never reached step {STOP_AT}: {proc.poll()=}"
        os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: every process of the job
        err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == SIGTERM_EXIT_STATUS, err[-4000:]
    assert f"SIGTERM at global step {STOP_AT}" in err, err[-4000:]
    # both ranks stopped at that step and left through the save with status 143 (rank 1's own record: the launcher
    # does not report its children's status)
    for rank in (0, 1):
        assert (marks / f"rank{rank}.stopped").read_text() == f"{STOP_AT} {SIGTERM_EXIT_STATUS}"
    saved = _last(cut)
    assert saved["global_step"] == STOP_AT and saved["SentimentDemoDataModule"]["batches"] == STOP_AT
    assert len(saved["kasa"]["rng_per_rank"]) == 2  # every rank's RNG state, gathered by the save both ranks ran

    assert _finish(reference) is not None and reference.returncode == 0
    full = _last(straight)
    assert full["global_step"] == 4

    resume = _start(
        tmp_path,
        "resumed",
        _config(cut, strategy=strategy, backbone=backbone),
        ckpt_path=cut / "lightning_logs/version_0/checkpoints/last.ckpt",
    )
    err = _finish(resume)
    assert resume.returncode == 0, err[-4000:]
    resumed = _last(cut, version=1)
    assert resumed["global_step"] == 4
    assert resumed["state_dict"].keys() == full["state_dict"].keys()
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, atol=1e-6, rtol=0, msg=k)
