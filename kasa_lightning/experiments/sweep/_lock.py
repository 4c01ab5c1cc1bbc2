"""Lock files of a sweep: two sweeps into one ``--output_dir`` never train a run twice.

Without them, two identical ``sweep`` commands started together would both train every run: interleaved
``fit.log`` headers, ``last.ckpt`` beside ``last-v1.ckpt``, a ``metrics.json`` naming a checkpoint that ``validate``
did not use, and both reporting every run done.

* **Each run**: ``<run dir>/.lock``, held while a sweep works on the run. Another sweep skips that run, does the
  others, then waits for the lock and looks again (the run is normally done by then and skipped).
* **The output folder**: ``<output_dir>/.sweeps/<host>-<pid>.lock`` for every sweep working there, for its whole
  life, and ``<output_dir>/.sweeps/plan.lock`` while one writes the runs' configs. A sweep whose arguments differ from
  those of a live sweep there is refused: it would rewrite the configs of runs the other has not reached yet.

A lock file is created with ``O_CREAT | O_EXCL`` (one creator wins, on local disks and NFS alike) and holds JSON:
``pid``, ``host``, ``start`` (the process's start time from ``/proc``, so that a reused pid is not taken for the
holder), ``since`` and the sweep's ``argv``. It is removed by its holder when done. A lock whose holder is gone is
stale and is taken over: same host, and the pid no longer exists or belongs to a process started at another time.
Takeovers are serialised by an ``fcntl.flock`` on ``<lock>.takeover``, inside which the lock is read again before
it is removed, so two sweeps finding the same stale lock never both take it. A lock of another host is never taken
over (its process cannot be checked from here): the message names the host, the pid and the file to delete if that
sweep is gone.

Why not ``filelock``: its ``FileLock`` is an ``flock`` on a file that it truncates when opening, so the file cannot
say who holds it; the messages here name the other sweep's process and host. (``flock`` alone would also need no
stale handling, as the kernel drops it with the process, but it is not honoured on every network filesystem, where
the ``O_EXCL`` file still is.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LockHolder", "acquire", "holder", "join_output_dir", "plan_lock", "release"]

_UNREADABLE_GRACE_S = 10.0  # a lock file without content yet is being written, unless older than this


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock file (its JSON content)."""

    pid: int
    host: str
    start: str | None = None
    since: str = ""
    argv: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}" + (f", since {self.since}" if self.since else "")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the fields after the command name, which may hold spaces


def _me(argv: list[str]) -> LockHolder:
    return LockHolder(
        os.getpid(), socket.gethostname(), _start_time(os.getpid()), time.strftime("%Y-%m-%dT%H:%M:%S"), list(argv)
    )


def _read(path: Path) -> LockHolder | None:
    try:
        data = json.loads(path.read_text())
        return LockHolder(int(data["pid"]), str(data["host"]), data.get("start"), data.get("since", ""), data["argv"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(who: LockHolder) -> bool:
    """Whether the holder may still run: always for another host (it cannot be checked from here)."""
    if who.host != socket.gethostname():
        return True
    try:
        os.kill(who.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    started = _start_time(who.pid)
    return who.start is None or started is None or started == who.start


def holder(path: Path) -> LockHolder | None:
    """The live holder of the lock file ``path``; None when there is none or it is stale."""
    who = _read(path)
    if who is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return LockHolder(-1, "?", since="being written") if age < _UNREADABLE_GRACE_S else None
    return who if _alive(who) else None


def _create(path: Path, me: LockHolder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(me.__dict__, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire(path: Path, argv: list[str]) -> LockHolder | None:
    """Take the lock file ``path`` for this process: None when taken (also by taking over a stale one), else the
    live holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me(argv)
    if _create(path, me):
        return None
    who = holder(path)
    if who is not None:
        return who
    with open(path.with_name(path.name + ".takeover"), "a") as guard:  # one takeover at a time
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        try:
            who = holder(path)  # again: another process may have taken it over meanwhile
            if who is not None:
                return who
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if _create(path, me):
                return None
            return holder(path) or LockHolder(-1, "?", since="just taken")
        finally:
            fcntl.flock(guard.fileno(), fcntl.LOCK_UN)


def release(path: Path) -> None:
    """Remove the lock file ``path`` if this process holds it."""
    who = _read(path)
    if who is not None and who.pid == os.getpid() and who.host == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def plan_lock(root: Path, argv: list[str], timeout: float = 120.0) -> Iterator[None]:
    """Hold ``<root>/.sweeps/plan.lock`` (waiting up to ``timeout`` s for another sweep's planning)."""
    path = root / ".sweeps" / "plan.lock"
    deadline = time.monotonic() + timeout
    while (who := acquire(path, argv)) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"another sweep ({who.describe()}) has held the lock {path} for over {timeout:.0f} s; if it is gone, "
                "delete the file"
            )
        time.sleep(0.2)
    try:
        yield
    finally:
        release(path)


def join_output_dir(root: Path, argv: list[str], register: bool = True) -> tuple[Path, list[LockHolder]]:
    """Register this sweep in ``<root>/.sweeps/`` (call under :func:`plan_lock`; ``register=False`` only looks);
    returns its lock file and the other live sweeps there whose arguments differ from ``argv`` (the caller refuses
    to run beside them; nothing is registered then)."""
    folder = root / ".sweeps"
    others = []
    for path in sorted(folder.glob("*-*.lock")):
        who = holder(path)
        if who is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale registration (safe: under plan_lock, and its process is gone)
        elif who.pid != os.getpid() and who.argv != list(argv):
            others.append(who)
    mine = folder / f"{socket.gethostname()}-{os.getpid()}.lock"
    if register and not others:
        release(mine)
        acquire(mine, argv)
    return mine, others
