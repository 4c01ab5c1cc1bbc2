"""Sweep lock files: atomic creation, stale takeover, no takeover of a live or remote holder, and two real
identical ``sweep`` processes into one ``--output_dir`` that never train a run twice."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import _env, _tiny_config

from kasa_lightning.experiments.sweep import _lock as sweep_lock
from kasa_lightning.experiments.sweep._lock import acquire, holder, join_output_dir, release

ARGV = ["--config", "a.yaml", "--seeds", "0-1"]


def _write_lock(path: Path, pid: int, host: str | None = None, start: str | None = None, argv=ARGV) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"pid": pid, "host": host or socket.gethostname(), "start": start, "since": "then", "argv": argv}
    path.write_text(json.dumps(data))


def test_acquire_writes_pid_and_host_and_release_removes_only_its_own(tmp_path):
    lock = tmp_path / "run" / ".lock"
    assert acquire(lock, ARGV) is None
    data = json.loads(lock.read_text())
    assert data["pid"] == os.getpid() and data["host"] == socket.gethostname() and data["argv"] == ARGV
    assert data["start"] == sweep_lock._start_time(os.getpid()) is not None
    who = acquire(lock, ARGV)  # held (by this live process): not taken again
    assert who is not None and who.pid == os.getpid()
    release(lock)
    assert not lock.exists()
    _write_lock(lock, os.getppid())  # someone else's lock is never removed by release
    release(lock)
    assert lock.exists()


def test_stale_lock_of_a_finished_process_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(lock, other.pid, start=sweep_lock._start_time(other.pid))
        who = acquire(lock, ARGV)
        assert who is not None and who.pid == other.pid  # alive: busy
    finally:
        other.kill()
        other.wait()
    assert holder(lock) is None  # gone: stale
    assert acquire(lock, ARGV) is None
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_reused_pid_with_another_start_time_is_stale(tmp_path):
    lock = tmp_path / ".lock"
    _write_lock(lock, os.getppid(), start="1")  # a live pid, but not the process that wrote the lock
    assert acquire(lock, ARGV) is None


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    _write_lock(lock, 999_999_999, host="another-host.example")
    who = acquire(lock, ARGV)
    assert who is not None and who.describe().startswith("pid 999999999 on another-host.example")


def test_lock_without_content_is_busy_while_young_and_stale_when_old(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("")  # created with O_EXCL, content not written yet
    assert acquire(lock, ARGV) is not None
    old = time.time() - 60
    os.utime(lock, (old, old))
    assert acquire(lock, ARGV) is None


def _race(lock: str, barrier, results) -> None:  # noqa: ANN001
    barrier.wait()
    results.put(acquire(Path(lock), ARGV) is None)


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_exactly_one_of_many_racing_processes_gets_the_lock(tmp_path, stale):
    """Creation with O_EXCL (fresh) and the flock-serialised takeover (stale) each let exactly one process win."""
    lock = tmp_path / ".lock"
    if stale:
        _write_lock(lock, 999_999_999)  # no such process
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(lock), barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    wins = [results.get(timeout=10) for _ in procs]
    assert sum(wins) == 1, wins


def test_output_dir_refuses_a_live_sweep_with_other_arguments(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reg = tmp_path / ".sweeps" / f"{socket.gethostname()}-{other.pid}.lock"
        _write_lock(reg, other.pid, start=sweep_lock._start_time(other.pid), argv=["--seeds", "0-4"])
        mine, others = join_output_dir(tmp_path, ARGV)
        assert [o.pid for o in others] == [other.pid] and not mine.exists()
        _write_lock(reg, other.pid, start=sweep_lock._start_time(other.pid), argv=ARGV)  # the same sweep: joins
        mine, others = join_output_dir(tmp_path, ARGV)
        assert others == [] and json.loads(mine.read_text())["pid"] == os.getpid()
    finally:
        other.kill()
        other.wait()
    mine2, others = join_output_dir(tmp_path, ["--seeds", "9"])  # the other is gone: its registration is stale
    assert others == [] and not reg.exists()


@pytest.mark.slow
def test_two_identical_sweeps_at_once_train_every_run_once(tmp_path):
    config = _tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "sweep"
    # two runs of one epoch (4 steps, ending with its validation: no separate validate process)
    cmd = [sys.executable, "-m", "kasa_lightning", "sweep", "--config", str(config), "--seeds", "0"]
    cmd += ["--methods", "kasa,lora", "--output_dir", str(out), "--trainer.max_epochs", "1"]
    procs = [
        subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=480)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not list(out.rglob("last-v*.ckpt"))
    for method in ("kasa", "lora"):
        run = out / "tiny" / method / "seed0"
        assert (run / "fit.log").read_text().count("\n$ ") == 1, run  # one fit
        assert json.loads((run / "status.json").read_text())["status"] == "done"
        assert json.loads((run / "metrics.json").read_text())["fit"]["global_step"] == 4
        assert not (run / ".lock").exists()
    assert any("in use by another sweep" in o for o in outputs), outputs
    assert all("sweep: 2 of 2 runs done" in o for o in outputs)
    assert not list((out / ".sweeps").glob("*-*.lock"))
