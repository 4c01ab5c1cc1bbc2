"""A sweep's plan: the cross product task configs x methods (or ablation steps) x seeds, each run's config resolved
through the real CLI parser and finished for its run directory (seed, root dir, ``last.ckpt``, ``metrics.json``),
and ``write_plan``, which writes the runs' ``resolved.yaml`` and ``run.json`` and the ``sweep.json`` manifest,
refusing to change the config of a run that has started. Nothing here runs training (``_exec``).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from kasa_lightning.experiments.sweep._protocol import family
from kasa_lightning.experiments.sweep._spec import (
    ABLATION,
    FORMAT,
    MANIFEST,
    METHODS,
    RESOLVED,
    Run,
    SweepError,
    default_configs_dir,
    read_json,
    task_name,
    write_json,
)


def _parse_only_cli() -> type:
    from kasa_lightning._lightning_cli import KaSACLI

    class ParseOnly(KaSACLI):
        """KaSACLI that parses and validates a config (all files, overrides and links) but builds nothing."""

        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    return ParseOnly


def resolve(args: list[str], where: str) -> dict[str, Any]:
    """The config the ``fit`` command line ``args`` (without ``fit``) resolves to, as plain YAML data."""
    cls = _parse_only_cli()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both argv and args
    try:
        cli = cls(args=args, run=False)
    except SystemExit as err:
        raise SweepError(
            f"{where}: the config does not parse with these files and overrides (the parser's message "
            f"is above): {shlex.join(args)}"
        ) from err
    finally:
        sys.argv = argv
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = cli.parser.dump(cli.config, skip_none=False)
    return yaml.safe_load(text)


def _finish_config(config: dict[str, Any], run_dir: Path, seed: int) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # a deep copy
    config["seed_everything"] = seed
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    if trainer.get("enable_progress_bar") is None:
        trainer["enable_progress_bar"] = False  # the logs are files
    callbacks = trainer.get("callbacks") or []
    checkpoints = [c for c in callbacks if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    if not checkpoints:
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {}})
        checkpoints = callbacks[-1:]
    for ckpt in checkpoints:  # checkpoints/last.ckpt in the run directory: the resume and test point
        ckpt.setdefault("init_args", {})
        ckpt["init_args"]["dirpath"] = str(run_dir / "checkpoints")
        ckpt["init_args"]["save_last"] = True
    trainer["callbacks"] = callbacks
    config["metrics_file"] = {"path": str(run_dir / "metrics.json")}
    return config


def plan(
    configs: list[str],
    seeds: list[int],
    methods: list[str] | None,
    output_dir: Path,
    overlays: list[str],
    overrides: list[str],
    ablation: bool = False,
    configs_dir: Path | None = None,
    metric: str | None = None,
    test: str = "auto",
    method_overlays: dict[str, str] | None = None,
    harness: dict[str, Any] | None = None,
) -> list[tuple[Run, dict[str, Any]]]:
    """Every run of the sweep with its resolved config (nothing is written). ``method_overlays``: more methods,
    name -> overlay file (``--method_overlay``); ``harness``: lm-eval after each fit
    (``kasa_lightning.harness.eval_settings``)."""
    method_overlays = dict(method_overlays or {})
    configs_dir = Path(configs_dir) if configs_dir else default_configs_dir()
    steps: dict[str, Path | None]
    if ablation:
        steps = {s: configs_dir / "ablation" / f"{s}.yaml" for s in ABLATION}
    else:
        steps = {
            m: (
                Path(method_overlays[m])
                if m in method_overlays
                else None
                if m == "kasa"
                else configs_dir / "methods" / f"{m}.yaml"
            )
            for m in (methods or ["kasa"])
        }
    for name, path in steps.items():
        if path is not None and not path.is_file():
            raise SweepError(
                f"the overlay of {name!r} is not at {path}; point --configs_dir at the repository's configs/ folder"
            )
    for given in [*configs, *overlays]:
        if not Path(given).is_file():
            raise SweepError(f"--config/--overlay {path}: no such file")
    if test not in ("auto", "yes", "no"):
        raise SweepError(f"--test {test}: choose auto, yes or no")
    names: dict[str, str] = {}
    for cfg in configs:
        name = task_name(Path(cfg))
        if name in names:
            raise SweepError(f"--config {cfg} and {names[name]} both give the task name {name!r}; rename one")
        names[name] = cfg
    runs: list[tuple[Run, dict[str, Any]]] = []
    for name, cfg in names.items():
        for method, overlay in steps.items():
            where = f"--config {cfg} with {'ablation step' if ablation else 'method'} {method}"
            args = ["--config", cfg]
            for extra in overlays:
                args += ["--config", extra]
            if overlay is not None:
                args += ["--config", str(overlay)]
            resolved = resolve(args + list(overrides), where)
            init = (resolved.get("model") or {}).get("init_args") or {}
            got = (init.get("adapter") or {}).get("method")
            if not ablation and method in METHODS and method not in method_overlays and got not in (None, method):
                raise SweepError(
                    f"{where}: the resolved config trains adapter.method={got!r}, not {method!r}; "
                    "--methods kasa needs a KaSA task config (the shipped ones are)"
                )
            info = family(resolved, where, metric, test)
            for seed in seeds:
                run = Run(
                    task=name,
                    method=method,
                    seed=seed,
                    config=str(cfg),
                    overlays=list(overlays),
                    model=str(init.get("backbone")),
                    ablation=ablation,
                    harness=harness,
                    **info,
                )
                runs.append((run, _finish_config(resolved, run.directory(output_dir).resolve(), seed)))
    return runs


_MISSING = object()


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"c": 2}]}`` -> ``{"a.b": 1, "l.0.c": 2}``."""
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out if out else {prefix: data}


def write_plan(runs: list[tuple[Run, dict[str, Any]]], root: Path, argv: list[str]) -> None:
    """The runs' configs and ``run.json``, and the sweep's manifest (merged with an earlier one in ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    for run, config in runs:  # first refuse to change the config of a run that has started
        run_dir = run.directory(root)
        started = (run_dir / "status.json").is_file() or (run_dir / "metrics.json").is_file()
        if started and (run_dir / RESOLVED).is_file():
            old, new = _flat(yaml.safe_load((run_dir / RESOLVED).read_text())), _flat(config)
            changed = sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING))
            if changed:
                raise SweepError(
                    f"--output_dir {root}: the run {run.rel_dir} was started with another config (other files, "
                    f"overlays or overrides; changed: {', '.join(changed[:5])}); its results would be mixed with "
                    f"these. Use another --output_dir, or delete {run_dir} to run it again"
                )
    for run, config in runs:
        run_dir = run.directory(root)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESOLVED).write_text(
            f"# resolved by: python -m kasa_lightning sweep {shlex.join(argv)}\n"
            + yaml.safe_dump(config, sort_keys=False, width=110)
        )
        write_json(run_dir / "run.json", {"format": FORMAT, **asdict(run)})
    manifest = read_json(root / MANIFEST) or {}
    if manifest and manifest.get("kind") != "kasa_lightning.sweep":
        raise SweepError(f"--output_dir {root}: its {MANIFEST} is not a sweep manifest; choose another directory")
    listed = list(manifest.get("runs", []))
    listed += [run.rel_dir for run, _ in runs if run.rel_dir not in listed]
    write_json(
        root / MANIFEST,
        {
            "kind": "kasa_lightning.sweep",
            "format": FORMAT,
            "runs": listed,
            "invocations": [*manifest.get("invocations", []), shlex.join(argv)],
        },
    )
