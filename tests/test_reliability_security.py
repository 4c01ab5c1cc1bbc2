"""Safe loading: every checkpoint this project reads is read with weights_only=True (fit --ckpt_path local or
URL, load_from_checkpoint, export), and exported safetensors files get the usual mode (0644 under umask 022)."""

from __future__ import annotations

import builtins
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning_helpers import tiny_data, tiny_module, trainer

from kasa_lightning import KaSAModule
from kasa_lightning.cli import export
from kasa_lightning.training.checkpoint_io import UnsafeCheckpointError, load_checkpoint_safely

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker`` (standing in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"epoch": 0, "global_step": 0, "state_dict": {}, "payload": _Payload(marker)}, path)
    return path


class _Server:
    """A file server on 127.0.0.1 in a daemon thread, stopped on exit."""

    def __init__(self, folder: Path) -> None:
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_fit_refuses_a_malicious_checkpoint_url_and_the_payload_does_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # torch.hub caches downloads there
    served = tmp_path / "served"
    served.mkdir()
    marker = tmp_path / "PWNED"
    _evil_checkpoint(served / "evil.ckpt", marker)
    with _Server(served) as base:
        # the failure, reproduced: Lightning's own loader reads URLs with weights_only=False and runs the payload
        from lightning.fabric.utilities.cloud_io import _load

        _load(f"{base}/evil.ckpt", map_location="cpu")
        assert marker.exists()
        marker.unlink()

        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
        cmd = [
            sys.executable,
            "-m",
            "kasa_lightning",
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.enable_progress_bar",
            "false",
            "--data.train_size",
            "16",
            "--data.val_size",
            "16",
            "--ckpt_path",
            f"{base}/evil.ckpt",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert not marker.exists(), "the pickle payload ran"
    assert f"refusing to load {base}/evil.ckpt: it is not a plain checkpoint" in proc.stderr
    assert "asks for 'io.open'" in proc.stderr  # builtins.open pickles as io.open
    assert "weights_only=False" not in proc.stderr and "weights_only` set to `False`" not in proc.stderr
    assert "Restoring states" in proc.stdout + proc.stderr  # it did try to resume (and stopped there)


def _good_checkpoint(tmp_path: Path) -> Path:
    L.seed_everything(0)
    t = trainer(tmp_path / "fit", max_steps=1, limit_val_batches=0)
    t.fit(tiny_module(), tiny_data())
    path = tmp_path / "good.ckpt"
    t.save_checkpoint(path)
    return path


def test_load_from_checkpoint_is_weights_only_for_files_and_urls(tmp_path):
    good = _good_checkpoint(tmp_path)
    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="asks for 'io.open'") as err:
        KaSAModule.load_from_checkpoint(evil)
    assert not marker.exists() and "weights_only" not in str(err.value)
    # a file that is not a checkpoint at all: a clear message, no advice to turn the protection off
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(UnsafeCheckpointError, match="is not a readable PyTorch checkpoint") as err:
        KaSAModule.load_from_checkpoint(text)
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(FileNotFoundError):
        load_checkpoint_safely(tmp_path / "missing.ckpt")
    # a good checkpoint loads from a file and from a URL, to the same adapters
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.ckpt").write_bytes(good.read_bytes())
    _evil_checkpoint(served / "evil.ckpt", marker)
    local = KaSAModule.load_from_checkpoint(good)
    with _Server(served) as base:
        remote = KaSAModule.load_from_checkpoint(f"{base}/good.ckpt")
        with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
            KaSAModule.load_from_checkpoint(f"{base}/evil.ckpt")
        with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
            load_checkpoint_safely(f"{base}/evil.ckpt")
    assert not marker.exists()
    for (k, a), (_, b) in zip(local.state_dict().items(), remote.state_dict().items()):
        assert torch.equal(a, b), k
    # the export command reads through load_from_checkpoint: refused too
    with pytest.raises(UnsafeCheckpointError):
        export(ckpt_path=evil, output_dir=tmp_path / "out", format="adapter")
    assert not marker.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_safetensors_files_get_the_usual_mode(tmp_path, umask):
    """safetensors' save_file creates 0600 files; exports follow the umask like any other file."""
    good = _good_checkpoint(tmp_path)
    old = os.umask(umask)
    try:
        for fmt in ("adapter", "peft-kasa", "peft-lora", "merged"):
            export(ckpt_path=good, output_dir=tmp_path / fmt, format=fmt)
    finally:
        os.umask(old)
    files = sorted((tmp_path).glob("*/*.safetensors"))
    assert {f.parent.name for f in files} == {"adapter", "peft-kasa", "peft-lora", "merged"}
    for f in files:
        assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~umask), f
    # and no temporary file is left next to them
    assert not [p for p in tmp_path.glob("*/.*") if p.is_file()]


def test_fsdp_full_checkpoint_is_checked_before_its_unrestricted_reader(tmp_path):
    """FSDP reads full checkpoints with Lightning's `_lazy_load`, an unrestricted unpickler that bypasses the
    CheckpointIO: the installed plugin makes the strategy read the file weights-only first."""
    from types import SimpleNamespace

    from lightning.fabric.utilities.load import _lazy_load
    from lightning.pytorch.strategies import FSDPStrategy

    from kasa_lightning.training.checkpoint_io import AtomicCheckpointIO, install

    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    _lazy_load(evil)  # the failure, reproduced: FSDP's reader runs the payload
    assert marker.exists()
    marker.unlink()
    strategy = FSDPStrategy()
    install(SimpleNamespace(strategy=strategy, _accelerator_connector=SimpleNamespace(checkpoint_io=None)))
    assert isinstance(strategy.checkpoint_io, AtomicCheckpointIO)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        strategy.load_checkpoint(evil)
    assert not marker.exists()
