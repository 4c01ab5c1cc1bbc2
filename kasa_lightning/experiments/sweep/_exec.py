"""A sweep's execution: each run as its own ``python -m kasa_lightning`` processes (fit, then validate/test of
``last.ckpt``), resumed from what its files say (``run_state``), with ``status.json`` (running / done / failed /
interrupted) and per-step logs; a SIGTERM to the sweep goes on to the training process and leaves the run
resumable. Kept apart from the plan so that the process and signal handling sits in one place.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from kasa_lightning.cli_errors import damaged_last_message
from kasa_lightning.experiments.sweep._spec import Run, read_json, write_json


def run_state(run: Run, run_dir: Path) -> dict[str, Any]:
    """What the files of a run say: ``fit_done``, ``validated``, ``tested``, ``trained`` (all three), ``evaluated``
    (the lm-eval tasks of ``sweep --eval_tasks`` scored), ``complete``, ``status``."""
    metrics = read_json(run_dir / "metrics.json") or {}
    fit = metrics.get("fit") or {}
    epochs = fit.get("epochs") or []
    fit_done = bool(fit.get("finished"))
    validated_at_end = bool(epochs) and epochs[-1].get("step") == fit.get("global_step")
    need_validate = (
        run.validate_last and fit_done and not validated_at_end and any(m.startswith("val/") for m in run.metrics)
    )
    validated = not need_validate or "validate" in metrics
    tested = not run.test or "test" in metrics
    evaluated = not run.harness or set(run.harness["tasks"]) <= set((metrics.get("eval") or {}).get("requested") or [])
    status = read_json(run_dir / "status.json") or {}
    return {
        "fit_done": fit_done,
        "validated": validated,
        "tested": tested,
        "trained": fit_done and validated and tested,
        "evaluated": evaluated,
        "complete": fit_done and validated and tested and evaluated,
        "status": status.get("status"),
        "error": status.get("error"),
    }


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    tail = [line for line in text if line.strip()][-lines:]
    errors = [line for line in tail if "Error" in line or "error:" in line]
    return "\n".join(errors[-3:] or tail[-5:])


class _Child:
    """The run's current process and whether the sweep was asked to stop (SIGTERM): the signal goes on to the
    training process, which stops (Lightning saves nothing more); the sweep then leaves the run as interrupted."""

    proc: subprocess.Popen | None = None
    stop: int | None = None


def on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM or Ctrl-C (SIGINT) to the sweep: the training process gets SIGTERM (a Ctrl-C to the terminal's process
    group reached it already; a second SIGINT would abort it without saving), stops after its batch and saves."""
    _Child.stop = signum
    proc = _Child.proc
    if proc is not None and proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)  # the main thread's wait() returns when it has exited
        except ProcessLookupError:
            pass
    else:
        raise SystemExit(128 + signum)


def execute(run: Run, root: Path) -> dict[str, Any]:
    """Run (or resume, or skip) one run; returns its ``status.json``."""
    run_dir = run.directory(root).resolve()
    state = run_state(run, run_dir)
    if state["complete"]:
        status = read_json(run_dir / "status.json") or {}
        if status.get("status") != "done":
            status = {"status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_json(run_dir / "status.json", status)
        return {**status, "skipped": True}
    last = run_dir / "checkpoints" / "last.ckpt"
    damaged = damaged_last_message(last) if not state["fit_done"] and last.is_file() else None
    if damaged is not None:  # resuming from it fails the same way every time: say which files could be used
        status = {"status": "failed", "step": "fit", "error": damaged, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(run_dir / "status.json", status)
        return status
    fit, *rest = run.commands(root)
    steps: list[tuple[str, list[str]]] = []
    if not state["fit_done"]:
        last = run_dir / "checkpoints" / "last.ckpt"
        steps.append(("fit", fit + (["--ckpt_path", str(last)] if last.is_file() else [])))
    for cmd in rest:
        steps.append((cmd[3], cmd))
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.time()
    for step, cmd in steps:
        if step == "validate" and run_state(run, run_dir)["validated"]:
            continue  # the fit validated its final weights itself
        if step in ("test", "eval") and run_state(run, run_dir)["tested" if step == "test" else "evaluated"]:
            continue  # done by an earlier invocation (a later step failed)
        write_json(
            run_dir / "status.json", {"status": "running", "step": step, "started": started, "command": shlex.join(cmd)}
        )
        log = run_dir / f"{step}.log"
        try:
            with open(log, "a") as out:
                out.write(f"\n$ {shlex.join(cmd)}\n")
                out.flush()
                _Child.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
                code = _Child.proc.wait()
                _Child.proc = None
        except (KeyboardInterrupt, SystemExit):  # stopped before the process ran or without our handler
            write_json(run_dir / "status.json", {"status": "interrupted", "step": step, "started": started})
            raise
        if _Child.stop is not None:  # stopped from outside: the next sweep resumes it from last.ckpt
            write_json(run_dir / "status.json", {"status": "interrupted", "step": step, "started": started})
            raise SystemExit(128 + _Child.stop)
        if code != 0:
            status = {
                "status": "failed",
                "step": step,
                "returncode": code,
                "started": started,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": shlex.join(cmd),
                "error": _log_tail(log) or f"exit code {code}",
                "log": str(log),
            }
            write_json(run_dir / "status.json", status)
            return status
    state = run_state(run, run_dir)
    if not state["complete"]:
        status = {
            "status": "failed",
            "step": "metrics",
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "error": f"the run exited 0 but {run_dir / 'metrics.json'} lacks "
            + (
                "the finished fit"
                if not state["fit_done"]
                else "the test/validate results"
                if not state["trained"]
                else "the eval results"
            ),
        }
        write_json(run_dir / "status.json", status)
        return status
    status = {
        "status": "done",
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_s": round(time.time() - t0, 1),
    }  # of this invocation's steps
    write_json(run_dir / "status.json", status)
    return status
