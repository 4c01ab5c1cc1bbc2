"""``python -m kasa_lightning eval``: parse the model settings as ``fit`` does, build the model (and load
``--ckpt_path`` into it), score it with lm-evaluation-harness, write the results.

The parser is LightningCLI's, built by ``KaSACLI`` without a Trainer command: ``--config`` files (a fit config, or
the ``config.yaml`` a run saved), ``--model.*`` and ``--seed_everything`` work as for ``fit``; a ``data`` section is
accepted and ignored, the ``trainer`` section gives only ``default_root_dir``. Nothing but the model is built.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from kasa_lightning._lightning_cli import KaSACLI
from kasa_lightning.harness._errors import EvalSetupError, require_lm_eval
from kasa_lightning.harness._scoring import (
    check_scorable,
    evaluate_module,
    parse_tasks,
    prepare_tasks,
    single_process,
)

#: the version of the file ``eval`` writes (``--output``)
FORMAT = 1


class EvalCLI(KaSACLI):
    """``KaSACLI`` that parses the model settings and the eval options and builds only the model."""

    def add_core_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        from lightning.pytorch import Trainer

        parser.add_lightning_class_args(Trainer, "trainer")  # accepted, so that fit configs parse as they are
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=True, required=False)

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        from jsonargparse import ActionYesNo

        super().add_arguments_to_parser(parser)  # the metrics file and fit's links (the data gives model.task)
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="a checkpoint written by fit")
        parser.add_argument("--tasks", type=str, required=True, help="lm-eval tasks, e.g. arc_easy,hellaswag")
        parser.add_argument("--num_fewshot", type=int | None, default=None, help="few-shot examples per prompt")
        parser.add_argument(
            "--limit", type=float | None, default=None, help="documents per task (a fraction when < 1); for checks"
        )
        parser.add_argument("--batch_size", type=int, default=1, help="requests per forward pass")
        parser.add_argument("--include_path", type=str | None, default=None, help="a folder of task YAML files")
        parser.add_argument(
            "--output", type=str | None, default=None, help="the results file (default <run dir>/eval.json)"
        )
        parser.add_argument(
            "--apply_chat_template", action=ActionYesNo, default=False, help="format prompts with the chat template"
        )
        parser.add_argument("--device", type=str | None, default=None, help="cpu, cuda, cuda:1 (default: auto)")
        # keys of the config.yaml that fit/validate/test save beside their logs, accepted so that it parses as it is
        # (the checkpoint is always read weights-only; nothing is printed per step)
        parser.add_argument("--weights_only", type=bool | None, default=None, help="ignored (always weights-only)")
        parser.add_argument("--verbose", type=bool, default=True, help="ignored")

    def before_instantiate_classes(self) -> None:
        from kasa_lightning.hub import resolve_pretrained

        model: Any = self.config.get("model")
        init: Any = model.get("init_args", model) if hasattr(model, "get") else {}
        backbone = init.get("backbone") if hasattr(init, "get") else None
        if isinstance(backbone, str) and init.get("backbone_config") is None:
            resolve_pretrained(backbone, "model.backbone")

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.model = self._get(self.config_init, "model")


def load_checkpoint(module: Any, ckpt_path: str) -> None:
    """Load a fit checkpoint into ``module`` as ``validate --ckpt_path`` does: the structure (backbone, task, adapter)
    must be the checkpoint's (else a ``ValueError`` naming the setting); the model is built for its tensors, without
    an SVD; the checkpoint is read weights-only."""
    from kasa_lightning.training import _checkpointing as checkpointing
    from kasa_lightning.training import checkpoint_io

    if not checkpoint_io.is_url(ckpt_path) and not Path(ckpt_path).is_file():
        raise EvalSetupError(f"--ckpt_path {ckpt_path}: no such file; give a checkpoint written by fit")
    checkpoint = checkpoint_io.load_checkpoint_safely(ckpt_path, map_location="cpu")
    token = checkpointing.LOADING_CHECKPOINT.set(True)
    try:
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
    except ValueError as err:  # another structure: the message names the setting
        raise EvalSetupError(f"--ckpt_path {ckpt_path}: {err}") from err
    finally:
        checkpointing.LOADING_CHECKPOINT.reset(token)


def run_directory(ckpt_path: str | None, default_root_dir: str | None) -> Path:
    """The run a checkpoint belongs to (the folder above ``checkpoints/``), else ``trainer.default_root_dir``."""
    if ckpt_path:
        folder = Path(ckpt_path).resolve().parent
        return folder.parent if folder.name == "checkpoints" else folder
    return Path(default_root_dir or ".")


def _plain(value: Any) -> Any:
    """JSON data: non-finite floats as null, anything else unknown as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _plain(value.item())
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per task (and group), lm-eval's metrics as it names them, ``"<metric>,<filter>"`` (``"acc,none"``,
    ``"acc_stderr,none"``, ``"exact_match,strict-match"``); not the alias or the sample count."""
    out: dict[str, dict[str, float | None]] = {}
    for part in ("results", "groups"):
        for task, values in (results.get(part) or {}).items():
            out[task] = {
                k: _plain(float(v))
                for k, v in values.items()
                if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
    return out


def update_metrics_file(path: Path, payload: dict[str, Any], output: Path) -> None:
    """Add (or replace) the scored tasks in the ``eval`` section of a run's ``metrics.json``
    (``kasa_lightning.callbacks.MetricsFile``); other tasks scored earlier stay. ``requested`` lists the names given
    to ``--tasks`` (a group or tag stands for several tasks), which ``sweep`` reads to resume."""
    from kasa_lightning.callbacks.metrics_file import read_for_update

    content = read_for_update(path)
    section: dict[str, Any] = content["eval"] if isinstance(content.get("eval"), dict) else {}
    tasks = dict(section.get("tasks") or {})
    for task, metrics in task_metrics(payload).items():
        tasks[task] = {
            "metrics": metrics,
            "version": (payload.get("versions") or {}).get(task),
            "n_shot": (payload.get("n-shot") or {}).get(task),
            "limit": payload["limit"],
            "ckpt_path": payload["ckpt_path"],
            "output": str(output),
        }
    requested = list(section.get("requested") or []) + [
        t for t in payload["tasks"] if t not in (section.get("requested") or [])
    ]
    content["eval"] = {"tasks": tasks, "requested": requested}
    content.setdefault("format", 1)
    _write_json(path, content)


def run(argv: list[str]) -> dict[str, Any]:
    """Parse ``argv`` (the arguments after ``eval``), score, write; returns what ``--output`` holds."""
    lm_eval = require_lm_eval()
    from lm_eval.utils import make_table

    from kasa_lightning.training import checkpoint_io

    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both argv and args
    try:
        cli = EvalCLI(args=argv, run=False)
    finally:
        sys.argv = saved_argv
    config = cli.config
    module = cli.model
    names = parse_tasks(config.tasks)
    single_process()
    check_scorable(module)
    ckpt_path = config.ckpt_path
    if ckpt_path is None and getattr(module, "backbone_config", None) is not None:
        raise EvalSetupError(
            "model.backbone_config builds the backbone with random weights, so without --ckpt_path eval would score "
            "an untrained random model; pass --ckpt_path of a fit run of this config (its checkpoints keep every "
            "weight), or set model.backbone to a pretrained model without model.backbone_config"
        )
    if ckpt_path is not None and not checkpoint_io.is_url(ckpt_path) and not Path(ckpt_path).is_file():
        raise EvalSetupError(f"--ckpt_path {ckpt_path}: no such file; give a checkpoint written by fit")
    prepared = prepare_tasks(names, config.include_path)  # names, paths and data before the model is built
    if ckpt_path is not None:
        load_checkpoint(module, ckpt_path)
    results = evaluate_module(
        module,
        names,
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        batch_size=config.batch_size,
        include_path=config.include_path,
        apply_chat_template=config.apply_chat_template,
        device=config.device,
        prepared=prepared,
    )
    trainer = config.get("trainer") or {}
    run_dir = run_directory(ckpt_path, trainer.get("default_root_dir"))
    output = Path(config.output) if config.output else run_dir / "eval.json"
    limit = config.limit
    payload = {
        "format": FORMAT,
        "results": results.get("results", {}),
        "groups": results.get("groups", {}),
        "versions": results.get("versions", {}),
        "n-shot": results.get("n-shot", {}),
        "higher_is_better": results.get("higher_is_better", {}),
        "n-samples": results.get("n-samples", {}),
        "tasks": names,
        "num_fewshot": config.num_fewshot,
        "limit": int(limit) if limit is not None and limit >= 1 and float(limit).is_integer() else limit,
        "batch_size": config.batch_size,
        "include_path": str(Path(config.include_path).resolve()) if config.include_path else None,
        "apply_chat_template": bool(config.apply_chat_template),
        "ckpt_path": str(Path(ckpt_path).resolve()) if ckpt_path and Path(ckpt_path).exists() else ckpt_path,
        "seed_everything": config.get("seed_everything"),
        "model": dict(module.hparams),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "configs": results.get("configs", {}),
    }
    payload = _plain(payload)
    _write_json(output, payload)
    metrics_path = (config.get("metrics_file") or {}).get("path")
    if metrics_path or ckpt_path:
        update_metrics_file(Path(metrics_path) if metrics_path else run_dir / "metrics.json", payload, output)
    print(make_table(results))
    print(f"wrote {output}")
    return payload


def main(argv: list[str]) -> int:
    """The command; exit status 2 with the message for bad input."""
    try:
        require_lm_eval()
    except ImportError as err:
        print(f"eval: error: {err}", file=sys.stderr)
        return 2
    try:
        run(argv)
    except EvalSetupError as err:
        print(f"eval: error: {err}", file=sys.stderr)
        return 2
    return 0
