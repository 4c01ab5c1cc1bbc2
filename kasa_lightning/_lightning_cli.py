"""``KaSACLI``: LightningCLI with this project's links and defaults. ``kasa_lightning.cli`` runs it (and its own
commands); the sweep uses it to resolve configs without running them.

* The optimiser and scheduler are not LightningCLI's automatic ones (those would be built over
  ``model.parameters()`` before ``configure_model`` runs): ``KaSAModule`` takes them as callables and builds
  them over the trainable parameters only.
* ``model.backbone`` is linked to ``data.tokenizer``; the DataModule's ``task`` and ``num_labels`` are linked
  to the model when both are instantiated.
* The resolved config is saved next to the logs (overwriting on re-runs); TensorBoard is the default logger, as
  ``kasa_lightning.training.loggers.AtomicTensorBoardLogger``: runs started together into one ``default_root_dir`` get
  distinct ``version_N`` folders, and a run that fails before logging anything leaves no empty folder.
* ``model.backbone`` (when the backbone is loaded from it, i.e. without ``backbone_config``) is checked before
  anything is built or written: a Hub name that cannot be loaded offline or without network is refused at once,
  naming the setting.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from kasa_lightning._short_names import import_shipped_classes
from kasa_lightning.cli_errors import check_ckpt_path, check_root_dir, resolve_best, setting_error
from kasa_lightning.datamodules.base import BaseDataModule
from kasa_lightning.hub import resolve_pretrained
from kasa_lightning.training.loggers import AtomicTensorBoardLogger
from kasa_lightning.training.module import KaSAModule


class KaSACLI(LightningCLI):
    """LightningCLI with the links and defaults above; subclass it to add your own arguments.

    ``extra_commands`` (name -> help line): the commands besides Lightning's that ``--help`` lists;
    ``kasa_lightning.cli`` sets it from its ``COMMANDS``.
    """

    extra_commands: ClassVar[dict[str, str]] = {}

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("model_class", KaSAModule)
        kwargs.setdefault("datamodule_class", BaseDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        import_shipped_classes()  # short names (--data.help GLUEDataModule) resolve only for imported classes
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

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """``--ckpt_path last`` is the newest ``last.ckpt`` under ``trainer.default_root_dir`` (every earlier run
        folder), or an error; Lightning looked in the new run's own folder only and started from step 0."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            from kasa_lightning.training._last_checkpoint import resolve_last_checkpoint

            kwargs["ckpt_path"] = resolve_last_checkpoint(self.trainer, subcommand)
        return kwargs

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        from kasa_lightning.callbacks import MetricsFile

        parser.add_lightning_class_args(MetricsFile, "metrics_file")  # always on: the report reads these files
        parser.link_arguments("model.init_args.backbone", "data.init_args.tokenizer")
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """LightningCLI's subcommands, then ``extra_commands``, so that ``--help`` lists every command.
        (``kasa_lightning.cli.main`` runs those before LightningCLI parses anything; their parsers here only carry
        the help line.)"""
        super()._add_subcommands(parser, **kwargs)
        from jsonargparse import ArgumentParser

        subcommands = parser._subcommands_action  # jsonargparse's action that add_subcommands() created above
        assert subcommands is not None
        for name, line in self.extra_commands.items():
            description = f"{line} Options: python -m kasa_lightning {name} --help"
            subcommands.add_subcommand(name, ArgumentParser(description=description), help=line)

    def before_instantiate_classes(self) -> None:
        if self.subcommand in self.extra_commands:
            raise ValueError(f"{self.subcommand!r} is not a Trainer command; run it with kasa_lightning.cli.main")
        if self.subcommand is None:  # run=False: objects only, nothing is loaded or written
            return
        config = self.config.get(self.subcommand)
        if config.get("ckpt_path") == "best" and self.subcommand in ("validate", "test", "predict"):
            config.ckpt_path = resolve_best(config.get("trainer", {}).get("default_root_dir"), self.subcommand)
        check_ckpt_path(config.get("ckpt_path"))
        check_root_dir(config.get("trainer", {}).get("default_root_dir"))
        # a backbone that the run will load by name and cannot be loaded is refused now, before any run folder
        # exists (with backbone_config the name only gives the tokenizer, which the DataModule checks when used)
        model = self.config.get(self.subcommand).get("model")
        init = model.get("init_args", model) if hasattr(model, "get") else None
        if init is None or not hasattr(init, "get"):
            return
        backbone = init.get("backbone")
        if isinstance(backbone, str) and init.get("backbone_config") is None:
            resolve_pretrained(backbone, "model.backbone")

    def after_fit(self) -> None:
        """One summary line on global rank 0: best metric and epoch, checkpoints, exports, TensorBoard command."""
        from kasa_lightning.training._run_summary import fit_summary

        summary = fit_summary(self.trainer)  # on every rank: trainer.log_dir is a broadcast under DDP/FSDP
        if self.trainer.is_global_zero:
            print(summary, flush=True)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's Trainer, with ``AtomicTensorBoardLogger`` where Lightning would make its default
        TensorBoard logger (``trainer.logger`` unset or true), with the same arguments; for ``predict`` without a
        prediction writer, ``DefaultPredictionWriter`` (a JSON lines file under ``default_root_dir``)."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict":  # predictions land in a file unless a writer was configured
            from lightning.pytorch.callbacks import BasePredictionWriter

            from kasa_lightning.callbacks.predictions import DefaultPredictionWriter

            callbacks: list[Any] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning at run time
            if not any(isinstance(cb, BasePredictionWriter) for cb in callbacks):
                callbacks.append(DefaultPredictionWriter.under(trainer.default_root_dir))
        configured = self._get(self.config_init, "trainer", default={}).get("logger")
        default = type(trainer.logger) is TensorBoardLogger and configured in (None, True) and "logger" not in kwargs
        if default and not isinstance(trainer.logger, AtomicTensorBoardLogger):
            from lightning.fabric.plugins.environments import SLURMEnvironment

            trainer.loggers = [
                AtomicTensorBoardLogger(save_dir=trainer.default_root_dir, version=SLURMEnvironment.job_id())
            ]
        return trainer
