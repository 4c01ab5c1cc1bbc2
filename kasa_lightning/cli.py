"""The command line: ``python -m kasa_lightning fit|validate|test|predict --config cfg.yaml`` (LightningCLI) and
``python -m kasa_lightning export --ckpt_path ... --format ... --output_dir ...``.

* The optimiser and scheduler are not LightningCLI's automatic ones (those would be built over
  ``model.parameters()`` before ``configure_model`` runs): ``KaSAModule`` takes them as callables and builds
  them over the trainable parameters only.
* ``model.backbone`` is linked to ``data.tokenizer``; the DataModule's ``task`` and ``num_labels`` are linked
  to the model when both are instantiated.
* The resolved config is saved next to the logs (overwriting on re-runs); TensorBoard is the default logger, as
  ``kasa_lightning.loggers.AtomicTensorBoardLogger``: runs started together into one ``default_root_dir`` get
  distinct ``version_N`` folders, and a run that fails before logging anything leaves no empty folder.
* ``model.backbone`` (when the backbone is loaded from it, i.e. without ``backbone_config``) is checked before
  anything is built or written: a Hub name that cannot be loaded offline or without network is refused at once,
  naming the setting.
* Commands besides LightningCLI's (``export``, ...) are rows of ``COMMANDS``; ``--help`` lists them all.
* Every run writes its metrics to a JSON file (``kasa_lightning.callbacks.MetricsFile``, always on;
  ``--metrics_file.path`` sets the file, default ``<log_dir>/metrics.json``).
* ``sweep`` (seeds x methods x configs, resumable) and ``report`` (the paper's protocol, statistics, plots) are
  ``kasa_lightning.sweep`` and ``kasa_lightning.report``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from kasa_lightning.artifacts import ExportFormat
from kasa_lightning.cli_errors import CLIError, check_ckpt_path, check_root_dir, resolve_best, setting_error
from kasa_lightning.datamodules.base import BaseDataModule
from kasa_lightning.hub import resolve_pretrained
from kasa_lightning.loggers import AtomicTensorBoardLogger
from kasa_lightning.module import KaSAModule


class KaSACLI(LightningCLI):
    """LightningCLI with the links and defaults above; subclass it to add your own arguments."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("model_class", KaSAModule)
        kwargs.setdefault("datamodule_class", BaseDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        given = sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]
        self._given_args = [str(a) for a in given] if isinstance(given, list) else []  # to name settings as written
        super().__init__(*args, **kwargs)

    def instantiate_classes(self) -> None:
        """LightningCLI's, with a value that a class refuses at construction reported as a `CLIError` naming the
        setting as written (``model.adapter.r=0 is invalid: ...``) instead of jsonargparse's union error."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            error = setting_error(err, config.as_dict() if config is not None else {}, self._given_args)
            if error is None:
                raise
            raise error from err

    def _parse_ckpt_path(self) -> None:
        """LightningCLI overwrites the parsed model settings with the checkpoint's hyperparameters when
        ``--ckpt_path`` is given, which silently drops the user's config and command line (and records the
        checkpoint's values in config.yaml). Here the user's settings stay; ``KaSAModule.on_load_checkpoint``
        refuses a checkpoint whose structure differs and warns about other differences."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        from kasa_lightning.callbacks import MetricsFile

        parser.add_lightning_class_args(MetricsFile, "metrics_file")  # always on: the report reads these files
        parser.link_arguments("model.init_args.backbone", "data.init_args.tokenizer")
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """LightningCLI's subcommands, then the rows of ``COMMANDS``, so that ``--help`` lists every command.
        (``main`` runs those before LightningCLI parses anything; their parsers here only carry the help line.)"""
        super()._add_subcommands(parser, **kwargs)
        from jsonargparse import ArgumentParser

        subcommands = parser._subcommands_action  # jsonargparse's action that add_subcommands() created above
        for name, command in COMMANDS.items():
            description = f"{command.help} Options: python -m kasa_lightning {name} --help"
            subcommands.add_subcommand(name, ArgumentParser(description=description), help=command.help)

    def before_instantiate_classes(self) -> None:
        if self.subcommand in COMMANDS:
            raise ValueError(f"{self.subcommand!r} is not a Trainer command; run it with kasa_lightning.cli.main")
        if self.subcommand is None:  # run=False: objects only, nothing is loaded or written
            return
        config = self.config.get(self.subcommand)
        if config.get("ckpt_path") == "best" and self.subcommand in ("validate", "test", "predict"):
            config.ckpt_path = resolve_best(config.get("trainer", {}).get("default_root_dir"), self.subcommand)
        check_ckpt_path(self.config.get(self.subcommand).get("ckpt_path"))
        check_root_dir(self.config.get(self.subcommand).get("trainer", {}).get("default_root_dir"))
        # a backbone that the run will load by name and cannot be loaded is refused now, before any run folder
        # exists (with backbone_config the name only gives the tokenizer, which the DataModule checks when used)
        model = self.config.get(self.subcommand).get("model")
        init = model.get("init_args", model) if hasattr(model, "get") else None
        backbone = init.get("backbone") if hasattr(init, "get") else None
        if isinstance(backbone, str) and init.get("backbone_config") is None:
            resolve_pretrained(backbone, "model.backbone")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's Trainer, with ``AtomicTensorBoardLogger`` where Lightning would make its default
        TensorBoard logger (``trainer.logger`` unset or true), with the same arguments; for ``predict`` without a
        prediction writer, ``DefaultPredictionWriter`` (a JSON lines file under ``default_root_dir``)."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict":  # predictions land in a file unless a writer was configured
            from lightning.pytorch.callbacks import BasePredictionWriter

            from kasa_lightning.callbacks.predictions import DefaultPredictionWriter

            if not any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks):
                trainer.callbacks.append(DefaultPredictionWriter.under(trainer.default_root_dir))
        configured = self._get(self.config_init, "trainer", default={}).get("logger")
        default = type(trainer.logger) is TensorBoardLogger and configured in (None, True) and "logger" not in kwargs
        if default and not isinstance(trainer.logger, AtomicTensorBoardLogger):
            from lightning.fabric.plugins.environments import SLURMEnvironment

            trainer.loggers = [
                AtomicTensorBoardLogger(save_dir=trainer.default_root_dir, version=SLURMEnvironment.job_id())
            ]
        return trainer


def export(
    ckpt_path: Path | None = None,
    output_dir: Path | None = None,
    format: ExportFormat = "peft-lora",
    model_class: str = "kasa_lightning.module.KaSAModule",
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

    from kasa_lightning.artifacts import export_module, prepare_output_dir

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
    """A command whose parser and work live in ``kasa_lightning.<name>.main(args) -> exit code``."""

    def run(args: list[str]) -> None:
        import importlib

        code = importlib.import_module(f"kasa_lightning.{name}").main(args)
        if code:
            raise SystemExit(code)

    return run


#: the extra commands, by name (add a row for a new one; ``main`` dispatches, ``--help`` lists them)
COMMANDS: dict[str, Command] = {
    "export": Command(_run_export, "Turn a fit checkpoint into a PEFT adapter, a merged model or an adapter file."),
    "sweep": Command(
        _run_module("sweep"),
        "Run configs x seeds x methods (or the ablation) as resumable fit runs, "
        "one directory each; --dry-run prints their commands.",
    ),
    "report": Command(
        _run_module("report"),
        "Aggregate a sweep by the paper's protocol beside the paper's numbers: "
        "results.md, results.json, plots, Welch and TOST tests.",
    ),
}


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
