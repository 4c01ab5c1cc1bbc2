"""Standard benchmarks for adapted models through lm-evaluation-harness (the optional extra ``[eval]``).

``python -m kasa_lightning eval --config cfg.yaml [--ckpt_path last.ckpt] --tasks arc_easy,hellaswag`` scores the
model as it is in memory, adapters applied (not merged, not reloaded through PEFT), with lm-eval's log-likelihood
and generation protocols; ``evaluate_module`` does the same from Python. lm-eval is imported only when something is
scored, so importing this package does not need it.

Public names:

* ``evaluate_module(module, tasks, ...)``: lm-eval's results dict for a ``KaSAModule``.
* ``prepare_tasks(tasks, include_path)``: the task names, include path and data checked and loaded, before a model.
* ``main(argv)``: the ``eval`` command (exit status 2 with the message for bad input); ``run(argv)`` returns what
  it writes.
* ``eval_settings(...)``, ``eval_command(...)``: ``sweep --eval_tasks``: the checked options, and a run's command.
* ``harness_runs(...)``, ``PAPER_SETS``, ``HARNESS_NOTE``: the report's lm-eval family (its runs, the paper's
  commonsense sets by lm-eval task name, the note on the protocols).
* ``EvalSetupError``, ``TaskDataUnavailableError``: bad input, and a task whose data cannot be had offline.
* ``LM_EVAL_MIN_VERSION``, ``require_lm_eval()``: the lm-eval this needs, and its import with a message naming
  the extra.
"""

from __future__ import annotations

from typing import Any

from kasa_lightning.harness._errors import (
    LM_EVAL_MIN_VERSION,
    EvalSetupError,
    TaskDataUnavailableError,
    require_lm_eval,
)
from kasa_lightning.harness._report import NOTE as HARNESS_NOTE
from kasa_lightning.harness._report import PAPER_SETS, harness_runs
from kasa_lightning.harness._scoring import evaluate_module, prepare_tasks
from kasa_lightning.harness._sweep import eval_command, eval_settings

__all__ = [
    "HARNESS_NOTE",
    "LM_EVAL_MIN_VERSION",
    "PAPER_SETS",
    "EvalSetupError",
    "TaskDataUnavailableError",
    "eval_command",
    "eval_settings",
    "evaluate_module",
    "harness_runs",
    "main",
    "prepare_tasks",
    "require_lm_eval",
    "run",
]


def run(argv: list[str]) -> dict[str, Any]:
    """The ``eval`` command on ``argv`` (the arguments after ``eval``); returns what ``--output`` holds."""
    from kasa_lightning.harness._command import run as run_command

    return run_command(argv)


def main(argv: list[str]) -> int:
    """The ``eval`` command; returns the exit status."""
    from kasa_lightning.harness._command import main as main_command

    return main_command(argv)
