"""lm-eval in a sweep (``sweep --eval_tasks T1,T2``): the options, checked when the sweep is planned, and each run's
``eval`` command after its fit (and test), which scores ``last.ckpt`` and adds the tasks to the run's
``metrics.json``. No lm-eval import here: planning a sweep does not need it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kasa_lightning.harness._errors import EvalSetupError


def eval_settings(
    tasks: str | None,
    include_path: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
) -> dict[str, Any] | None:
    """The ``harness`` entry of a sweep's runs (``run.json``), or None without ``--eval_tasks``. Paths are made
    absolute: the runs' commands may be started from another directory."""
    if tasks is None:
        for name, value in (("--eval_include_path", include_path), ("--eval_limit", limit)):
            if value is not None:
                raise EvalSetupError(f"{name} without --eval_tasks: name the lm-eval tasks to score after each fit")
        return None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names or len(set(names)) != len(names):
        raise EvalSetupError(f"--eval_tasks {tasks!r}: name each lm-eval task once, e.g. --eval_tasks arc_easy,piqa")
    if include_path is not None and not Path(include_path).is_dir():
        raise EvalSetupError(f"--eval_include_path {include_path}: no such directory (the folder of your task YAMLs)")
    if limit is not None and not limit > 0:
        raise EvalSetupError(f"--eval_limit {limit} must be > 0")
    if num_fewshot is not None and num_fewshot < 0:
        raise EvalSetupError(f"--eval_num_fewshot {num_fewshot} must be >= 0")
    if batch_size < 1:
        raise EvalSetupError(f"--eval_batch_size {batch_size} must be >= 1")
    return {
        "tasks": names,
        "include_path": str(Path(include_path).resolve()) if include_path else None,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
    }


def eval_command(base: list[str], config: str, ckpt: str, output: str, settings: dict[str, Any]) -> list[str]:
    """``<base> eval --config <resolved.yaml> --ckpt_path <last.ckpt> --tasks ... --output <run>/eval.json``."""
    cmd = [*base, "eval", "--config", config, "--ckpt_path", ckpt, "--tasks", ",".join(settings["tasks"])]
    cmd += ["--output", output, "--batch_size", str(settings.get("batch_size") or 1)]
    for key in ("include_path", "limit", "num_fewshot"):
        if settings.get(key) is not None:
            value = settings[key]
            cmd += [f"--{key}", str(int(value) if isinstance(value, float) and value.is_integer() else value)]
    return cmd
