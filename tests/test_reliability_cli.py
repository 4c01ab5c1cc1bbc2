"""Reliability, command line and run folders: atomic run-folder claims, the top-level help, clear
Hub errors offline and without network (item 13), and no empty run folder after a failed start (item 17)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import MINILM, TINY_BERT

from kasa_lightning.training.loggers import (
    AtomicTensorBoardLogger,
    claim_next_version,
    remove_unused_run_dir,
)

TESTS = Path(__file__).resolve().parent


def _env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _tiny_config(path: Path, root: Path, seed: int = 0, **trainer) -> Path:
    config = {
        "seed_everything": seed,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer,
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 4}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 16, "val_size": 8, "batch_size": 8, "max_length": 16},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(*args: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kasa_lightning", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------- item 3: atomic run-folder claims
def test_two_loggers_asking_before_either_writes_get_distinct_folders(tmp_path):
    # Lightning's logger lists the folder and creates it only when it first writes: asked twice first, it
    # hands out version_0 twice (the race of two runs started together)
    first, second = TensorBoardLogger(tmp_path), TensorBoardLogger(tmp_path)
    assert (first.version, second.version) == (0, 0)
    first, second = AtomicTensorBoardLogger(tmp_path), AtomicTensorBoardLogger(tmp_path)
    assert (first.version, second.version) == (0, 1)
    assert (tmp_path / "lightning_logs/version_0").is_dir() and (tmp_path / "lightning_logs/version_1").is_dir()
    assert first.log_dir == str(tmp_path / "lightning_logs/version_0")
    # a file named like a version is skipped; an explicit version claims nothing
    (tmp_path / "lightning_logs/version_2").write_text("not a folder")
    assert AtomicTensorBoardLogger(tmp_path).version == 3
    assert AtomicTensorBoardLogger(tmp_path, version=7).version == 7
    assert not (tmp_path / "lightning_logs/version_7").exists()


def test_claims_racing_in_threads_are_all_distinct(tmp_path):
    threads, n = [], 16
    barrier = threading.Barrier(n)
    got: list[int] = []

    def claim() -> None:
        barrier.wait(timeout=30)
        got.append(claim_next_version(tmp_path / "runs")[0])

    for _ in range(n):
        threads.append(threading.Thread(target=claim))
        threads[-1].start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == list(range(n))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(f"version_{k}" for k in range(n))


def test_two_fit_processes_started_together_get_their_own_folders(tmp_path):
    """Two real fits into one default_root_dir, held together at the moment each has chosen its run folder."""
    root, barrier = tmp_path / "root", tmp_path / "barrier"
    profiler = {"class_path": "rel_cli_helpers.BarrierProfiler", "init_args": {"directory": str(barrier)}}
    procs = {}
    for seed in (11, 22):
        cfg = _tiny_config(tmp_path / f"run{seed}.yaml", root, seed=seed, profiler=profiler)
        procs[seed] = subprocess.Popen(
            [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(cfg)],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        outs = {seed: p.communicate(timeout=240) for seed, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for seed, p in procs.items():
        assert p.returncode == 0, outs[seed][1][-3000:]
    runs = sorted((root / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    seed_of_pid = {str(p.pid): seed for seed, p in procs.items()}
    seeds = []
    for run in runs:
        names = {p.name for p in run.iterdir()}
        assert {"config.yaml", "hparams.yaml", "checkpoints"} <= names, names
        events = [n for n in names if n.startswith("events.out.tfevents.")]
        writers = {n.split(".")[-2] for n in events}  # events.out.tfevents.<time>.<host>.<pid>.<k>
        assert len(writers) == 1, events  # one process wrote this folder's events
        seed = seed_of_pid[writers.pop()]
        assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == seed
        assert len(list((run / "checkpoints").glob("*.ckpt"))) >= 1
        seeds.append(seed)
    assert sorted(seeds) == [11, 22]


# ---------------------------------------------------------------- item 17: no empty folder after a failed start
def test_failed_start_leaves_no_run_folder(tmp_path):
    cfg = _tiny_config(tmp_path / "run.yaml", tmp_path / "root")
    # TINY_BERT's layers are 32 x 32: r=40 fails when the adapters are applied, after the logger started
    proc = _cli("fit", "--config", str(cfg), "--model.adapter.r", "40", cwd=tmp_path)
    assert proc.returncode != 0
    assert "r=40 is too large" in proc.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "root").rglob("version_*")), sorted((tmp_path / "root").rglob("*"))


def test_failed_run_removes_only_its_own_unused_folder(tmp_path):
    def started(**kwargs) -> AtomicTensorBoardLogger:
        logger = AtomicTensorBoardLogger(tmp_path, **kwargs)
        logger.log_hyperparams({"r": 4})  # event file + hp_metric placeholder, as at a start
        logger.save()  # hparams.yaml
        Path(logger.log_dir, "config.yaml").write_text("seed_everything: 0\n")
        return logger

    unused = started()
    unused.finalize("failed")
    assert not Path(unused.log_dir).exists()
    trained = started()
    trained.log_metrics({"train/loss": 0.5}, step=1)
    trained.finalize("failed")
    assert Path(trained.log_dir).is_dir()  # its loss curve is kept
    with_ckpt = started()
    Path(with_ckpt.log_dir, "checkpoints").mkdir()
    with_ckpt.finalize("failed")
    assert Path(with_ckpt.log_dir, "checkpoints").is_dir()
    ok = started()
    ok.finalize("success")
    assert Path(ok.log_dir).is_dir()
    # a folder it did not create (explicit version) is never removed
    fixed = started(version="mine")
    fixed.finalize("failed")
    assert Path(fixed.log_dir).is_dir()
    # the helper alone: a stranger's file keeps the folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("x")
    (other / "notes.txt").write_text("x")
    assert not remove_unused_run_dir(other) and (other / "config.yaml").exists()


# ---------------------------------------------------------------- item 12: --help lists every command
def test_top_level_help_lists_every_command(tmp_path):
    import kasa_lightning.cli

    proc = _cli("--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = set(re.findall(r"^ {4}(\w+) ", proc.stdout, flags=re.MULTILINE))
    expected = {"fit", "validate", "test", "predict", "export"} | set(getattr(kasa_lightning.cli, "COMMANDS", {}))
    assert expected <= listed, proc.stdout
    choices = re.search(r"\{([\w,]+)\}", proc.stdout).group(1).split(",")
    assert expected <= set(choices)


def test_export_help_shows_the_overwrite_flag(capsys):
    from kasa_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--overwrite" in out and "--output_dir" in out and "python -m kasa_lightning export" in out


# ---------------------------------------------------------------- item 13: a Hub name that cannot be loaded
def test_hub_name_offline_names_the_setting_and_the_ways_out(tmp_path):
    cfg = _tiny_config(tmp_path / "run.yaml", tmp_path / "root")
    proc = _cli(
        "fit",
        "--config",
        str(cfg),
        "--model.backbone",
        "foo/bar",
        "--model.backbone_config",
        "null",
        cwd=tmp_path,
        HF_HUB_CACHE=str(tmp_path / "empty_cache"),
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "model.backbone='foo/bar'" in last, last
    assert "HF_HUB_OFFLINE" in last and "local model directory" in last and "network" in last
    assert not (tmp_path / "root").exists()  # refused before any run folder


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: connections are refused


def test_hub_name_without_network_fails_at_once_without_retries(tmp_path, monkeypatch, caplog):
    """Online mode with the Hub unreachable (a closed loopback port): huggingface_hub alone retries with back-off
    (about 55 s for a tokenizer) and then raises an OSError that does not name the model."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from kasa_lightning.hub import resolve_pretrained

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_loopback_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    start = time.monotonic()
    with pytest.raises(OSError, match=r"model.backbone='foo/bar' .*cannot be reached.*local model directory"):
        AutoTokenizer.from_pretrained(resolve_pretrained("foo/bar"))  # as the module and the DataModule do
    assert time.monotonic() - start < 5
    assert "Retrying" not in caplog.text
    # a name in the local cache is left to from_pretrained (which uses the cache without retries)
    snapshot = tmp_path / "empty_cache/models--foo--cached/snapshots/abc"
    snapshot.mkdir(parents=True)
    assert resolve_pretrained("foo/cached") == "foo/cached"


def test_tokenizer_hub_name_offline_names_data_tokenizer(tmp_path, monkeypatch):
    """With ``backbone_config`` the name only gives the tokenizer: the DataModule's error names its setting."""
    from huggingface_hub import constants

    from kasa_lightning.datamodules import SentimentDemoDataModule

    assert constants.HF_HUB_OFFLINE  # conftest
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(OSError, match=r"data.tokenizer='foo/bar' .*offline mode is on.*local model directory"):
        SentimentDemoDataModule(tokenizer="foo/bar").tokenizer  # noqa: B018 - the property loads it
