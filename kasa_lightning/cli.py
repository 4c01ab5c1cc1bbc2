"""The command line: ``python -m kasa_lightning fit|validate|test|predict --config cfg.yaml`` (LightningCLI) and
``python -m kasa_lightning export --ckpt_path ... --format ... --output_dir ...``.

* Fit/validate/test/predict are ``KaSACLI``: LightningCLI with the project's links
  and defaults (optimiser over the trainable parameters only, ``model.backbone`` linked to ``data.tokenizer``,
  ``AtomicTensorBoardLogger`` as the default logger, the backbone checked before anything is written).
* Commands besides LightningCLI's (``export``, ...) are rows of ``COMMANDS``; ``--help`` lists them all.
* Every run writes its metrics to a JSON file (``kasa_lightning.callbacks.MetricsFile``, always on;
  ``--metrics_file.path`` sets the file, default ``<log_dir>/metrics.json``).
* ``sweep`` (seeds x methods x configs, resumable) and ``report`` (the paper's protocol, statistics, plots) are
  ``kasa_lightning.experiments.sweep`` and ``kasa_lightning.experiments.report``.
* ``eval`` (lm-evaluation-harness on the adapted model in memory) is ``kasa_lightning.harness``, imported only by
  that command (lm-eval is the optional extra ``[eval]``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kasa_lightning._lightning_cli import KaSACLI
from kasa_lightning.cli_errors import CLIError, check_ckpt_path
from kasa_lightning.training.artifacts import ExportFormat

__all__ = ["COMMANDS", "Command", "KaSACLI", "export", "main"]


def export(
    ckpt_path: Path | None = None,
    output_dir: Path | None = None,
    format: ExportFormat = "peft-lora",
    model_class: str = "kasa_lightning.KaSAModule",
    overwrite: bool = False,
) -> Path:
    """Turn a trained checkpoint into a deployable artefact.

    Args:
        ckpt_path: a checkpoint written by ``fit``.
        output_dir: where to write.
        format: ``peft-kasa`` (PEFT KaSA adapter), ``peft-lora`` (plain LoRA adapter on the ORIGINAL base),
            ``merged`` (a Hugging Face model directory with the update merged, via ``save_pretrained``, plus
            the tokenizer) or ``adapter`` (this project's safetensors adapter file).
        model_class: the LightningModule class that wrote the checkpoint (for subclasses).
        overwrite: export into a non-empty ``output_dir`` after deleting its contents (never a folder that holds
            the checkpoint, the current directory or the home directory). Without it a non-empty folder is refused:
            an adapter written next to an older merged model would be applied on top of the merged weights.
    """
    import importlib

    from kasa_lightning.training.artifacts import export_module, prepare_output_dir

    if ckpt_path is None or output_dir is None:
        raise ValueError("export needs --ckpt_path <fit checkpoint> and --output_dir <directory>")
    check_ckpt_path(ckpt_path)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path} does not exist")
    created = not Path(output_dir).exists()
    prepare_output_dir(output_dir, overwrite, keep=[ckpt_path])  # before the (slow) load: refuse or clear now
    try:
        module_name, _, cls_name = model_class.rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        module = cls.load_from_checkpoint(str(ckpt_path), map_location="cpu")
        export_module(module, format, output_dir)
    except BaseException:
        if created and Path(output_dir).is_dir() and not any(Path(output_dir).iterdir()):
            Path(output_dir).rmdir()  # a failed export leaves no empty folder it made
        raise
    print(f"wrote {format} to {output_dir}")
    return output_dir


@dataclass(frozen=True)
class Command:
    """A command of ``python -m kasa_lightning`` besides LightningCLI's fit/validate/test/predict.

    Attributes:
        run: called with the arguments after the command's name (``sys.argv[2:]``); parses and runs it.
        help: one line for ``python -m kasa_lightning --help``.
    """

    run: Callable[[list[str]], Any]
    help: str


def _run_export(args: list[str]) -> Any:
    """``export``'s options from ``export``'s signature and docstring; ``--overwrite`` is a flag."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    parser = ArgumentParser(prog="python -m kasa_lightning export", description=COMMANDS["export"].help)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="Path to a configuration file (yaml).")
    parser.add_function_arguments(export, skip={"overwrite"})
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="Export into a non-empty --output_dir after deleting its contents (never a folder that "
        "holds the checkpoint, the current directory or the home directory).",
    )
    config = parser.parse_args(args).as_dict()
    config.pop("config", None)
    config.pop("__path__", None)
    return export(**config)


def _run_module(name: str) -> Callable[[list[str]], None]:
    """A command whose parser and work live in the module ``name`` (``main(args) -> exit code``)."""

    def run(args: list[str]) -> None:
        import importlib

        code = importlib.import_module(name).main(args)
        if code:
            raise SystemExit(code)

    return run


#: the extra commands, by name (add a row for a new one; ``main`` dispatches, ``--help`` lists them)
COMMANDS: dict[str, Command] = {
    "export": Command(_run_export, "Turn a fit checkpoint into a PEFT adapter, a merged model or an adapter file."),
    "sweep": Command(
        _run_module("kasa_lightning.experiments.sweep"),
        "Run configs x seeds x methods (or the ablation) as resumable fit runs, "
        "one directory each; --dry-run prints their commands.",
    ),
    "eval": Command(
        _run_module("kasa_lightning.harness"),
        "Score the adapted model (and --ckpt_path) on lm-evaluation-harness tasks, adapters applied in memory: "
        "--tasks arc_easy,hellaswag [--include_path DIR] [--output FILE.json].",
    ),
    "report": Command(
        _run_module("kasa_lightning.experiments.report"),
        "Aggregate a sweep by the paper's protocol beside the paper's numbers: "
        "results.md, results.json, plots, Welch and TOST tests.",
    ),
}

KaSACLI.extra_commands = {name: command.help for name, command in COMMANDS.items()}


def main(argv: list[str] | None = None) -> KaSACLI | None:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``. Returns the CLI object (None for ``COMMANDS``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            COMMANDS[args[0]].run(args[1:])
            return None
        return KaSACLI(args=argv)
    except CLIError as err:  # a bad value on the command line: the message, not a traceback
        for line in err.details:
            print(line, file=sys.stderr)
        print(f"error: {err.message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Destroy the process group a multi-process run created, before the interpreter exits. Left to interpreter
    shutdown, gloo's threads were at times destroyed while still joinable, and the process aborted ("terminate
    called without an active exception", exit -6) after a successful fit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
