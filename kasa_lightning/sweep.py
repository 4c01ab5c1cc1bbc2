"""``python -m kasa_lightning sweep``: the paper's protocol as runs, seeds x methods (or the ablation) x configs.

    python -m kasa_lightning sweep --config configs/glue/roberta-base/rte.yaml [--config more.yaml ...]
        [--overlay configs/strategies/bf16-mixed.yaml ...] --seeds 0-4 --methods kasa,lora,pissa,milora
        --output_dir sweeps/rte [--ablation] [--test auto|yes|no] [--dry-run]
        [--trainer.max_steps 6 --data.init_args.data_dir ../glue ...]   # any fit override, for every run

Each run gets ``<output_dir>/<task>/<method>/seed<k>/`` with

* ``resolved.yaml``: the resolved config (task config, ``--overlay`` files, the method's overlay from
  ``configs/methods/`` or ``configs/ablation/``, the overrides, then ``seed_everything: k``,
  ``trainer.default_root_dir`` = the run directory, the ModelCheckpoint writing ``checkpoints/last.ckpt`` there,
  ``metrics_file.path`` = ``metrics.json`` there, no progress bar unless asked for);
* ``run.json``: what the report needs (task, method, seed, model, task family, the metrics and the protocol);
* ``metrics.json`` (written by the run, ``kasa_lightning.callbacks.MetricsFile``), ``status.json`` (done /
  failed with the error / running) and the logs ``fit.log``, ``validate.log``, ``test.log``.

``<task>`` is the config's path under ``configs/`` with ``/`` as ``-`` (``glue-roberta-base-rte``), or the file's
stem for a config elsewhere. Every run is ``python -m kasa_lightning fit --config <run>/resolved.yaml`` in its own
process, then ``validate`` of ``last.ckpt`` when the training stopped after its last validation (``max_steps``
mid-epoch), then ``test`` of ``last.ckpt`` where the config has a test set (E2E, commonsense and instruction
configs: the paper scores their last epoch; GLUE's "test" would be its validation split again).

Resumable: a run whose ``status.json`` says done is skipped; any other run with a ``checkpoints/last.ckpt``
continues from it (``fit --ckpt_path``), and a finished fit is not repeated when only its test failed. A failed
run is recorded (``status.json``: the step, the exit code and the end of its log) and the sweep goes on; the exit
status is 1 when a run failed. A run that has started keeps its config: the same ``--output_dir`` with other
files, overlays or overrides is refused for it (results would mix). ``--dry-run`` writes the configs and prints one
shell command per run (``cd <working dir> && python -m kasa_lightning fit ... [&& ... test ...]``) for a cluster's
own scheduler (a SLURM array, GNU parallel, Ray); running the same sweep again later skips what they finished.
There is no scheduler here: runs go one after the other; multi-device training is Lightning's
(``--trainer.devices``, ``--trainer.num_nodes``).

The seed sets ``seed_everything`` (initialisation, dropout); the data order and any held-out split follow the
DataModule's own ``seed`` (fixed), so every method and seed sees the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("kasa", "lora", "pissa", "milora")
ABLATION = ("1-lora", "2-svd-truncation", "3-singular-values", "4-l2", "5-kasa")
PASS_THROUGH = ("--trainer.", "--model.", "--data.", "--seed_everything", "--metrics_file.")
MANIFEST = "sweep.json"
RESOLVED = "resolved.yaml"  # not config.yaml: LightningCLI writes that into the log dir (the run dir if no logger)
FORMAT = 1


class SweepError(ValueError):
    """Bad input to ``sweep``/``report``; the message names the setting and the fix."""


# ---------------------------------------------------------------------------------------------------- inputs
def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"``; ``"0-2,7"``. Ranges go up, seeds are >= 0 and distinct."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part.lstrip("-"):
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise SweepError(f"--seeds {text}: the range {part} goes down; write it upwards ({high}-{low})")
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
        except ValueError as err:
            if isinstance(err, SweepError):
                raise
            raise SweepError(f"--seeds {text}: {part!r} is not a seed or a range; write e.g. 0-4 or 0,2,5") from None
    if not seeds:
        raise SweepError(f"--seeds {text!r} names no seed; write e.g. 0-4 or 0,2,5")
    if any(s < 0 for s in seeds):
        raise SweepError(f"--seeds {text}: seeds must be >= 0")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text} names a seed twice")
    return seeds


def parse_methods(text: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``"kasa,lora"`` -> ["kasa", "lora"]; ``extra``: names given an overlay with ``--method_overlay``."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS and m not in extra]
    if unknown:
        raise SweepError(
            f"--methods: unknown method(s) {unknown}; choose from {','.join(METHODS + tuple(extra))} "
            "(or --ablation for the five ablation steps; --method_overlay NAME=FILE adds one)"
        )
    if not methods:
        raise SweepError(f"--methods {text!r} names no method; choose from {','.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise SweepError(f"--methods {text} names a method twice")
    return methods


def default_configs_dir() -> Path:
    """The repository's ``configs/`` (next to the package in a checkout), else ``./configs``."""
    here = Path(__file__).resolve().parents[1] / "configs"
    return here if (here / "methods").is_dir() else Path.cwd() / "configs"


def task_name(config: Path) -> str:
    """``configs/glue/roberta-base/rte.yaml`` -> ``glue-roberta-base-rte``; elsewhere the file's stem."""
    parts = config.resolve().with_suffix("").parts
    if "configs" in parts:
        after = parts[len(parts) - 1 - parts[::-1].index("configs") + 1 :]
        if after:
            return "-".join(after)
    return config.stem


# ---------------------------------------------------------------------------------------------------- the runs
@dataclass
class Run:
    """One run of a sweep; ``run.json`` holds it (``asdict``)."""

    task: str
    method: str
    seed: int
    config: str  # the task config as given
    overlays: list[str]
    family: str  # glue, e2e, commonsense, instruct, demo, custom
    model: str  # model.init_args.backbone
    paper_task: str | None  # the task's key in kasa_lightning/data/paper_results.json
    metrics: list[str]  # logged names, e.g. "val/accuracy", "test/BLEU"
    paper_metrics: dict[str, str] = field(default_factory=dict)  # logged name -> the paper's metric key
    select: str = "best"  # per run: "best" validation epoch or "last" value
    aggregate: str = "median"  # over seeds: "median" or "mean" (the paper's headline number)
    validate_last: bool = False  # validate last.ckpt when training stopped after its last validation
    test: bool = False  # test last.ckpt after fit
    ablation: bool = False

    @property
    def rel_dir(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"

    def directory(self, root: Path) -> Path:
        return Path(root) / self.rel_dir

    def commands(self, root: Path, python: str = sys.executable) -> list[list[str]]:
        """The process(es) of this run, fresh (no resume): fit, [validate last.ckpt], [test last.ckpt]."""
        run = self.directory(root).resolve()
        config, last = str(run / RESOLVED), str(run / "checkpoints" / "last.ckpt")
        base = [python, "-m", "kasa_lightning"]
        cmds = [base + ["fit", "--config", config]]
        if self.validate_last:
            cmds.append(base + ["validate", "--config", config, "--ckpt_path", last])
        if self.test:
            cmds.append(base + ["test", "--config", config, "--ckpt_path", last])
        return cmds

    def shell_command(self, root: Path, python: str = sys.executable, cwd: str | None = None) -> str:
        """One shell line: ``cd`` to the sweep's working directory (relative paths in the config, such as a
        ``data_dir``, are relative to it), then the run's processes joined by ``&&``."""
        steps = " && ".join(shlex.join(c) for c in self.commands(root, python))
        return f"cd {shlex.quote(cwd or os.getcwd())} && {steps}"


def _family(config: dict[str, Any], where: str, metric: str | None, test: str) -> dict[str, Any]:
    """The task family, the metrics to report, the paper's protocol and the paper's key, from a resolved config."""
    data = config.get("data") or {}
    cls = str(data.get("class_path", "")).rsplit(".", 1)[-1]
    init = data.get("init_args") or {}
    trainer = config.get("trainer") or {}
    max_steps = trainer.get("max_steps")
    info: dict[str, Any] = {"validate_last": max_steps is not None and int(max_steps) > 0}
    if cls == "GLUEDataModule":
        from kasa_lightning.datamodules.glue import TASKS

        task = init.get("task")
        spec = TASKS[task]
        suffixes = [f"_{n}" for n in spec.val_names] if spec.val_names and not init.get("val_from_train") else [""]
        metrics = [f"val/{m}{s}" for m in spec.metrics for s in suffixes]
        info.update(
            family="glue",
            paper_task=task,
            metrics=metrics,
            select="best",
            aggregate="median",
            test=False,
            paper_metrics={f"val/{spec.metrics[0]}": spec.metrics[0]} if len(suffixes) == 1 else {},
        )
    elif cls == "E2EDataModule":
        if init.get("test_path") is None:
            raise SweepError(
                f"{where}: no metric to report: the E2E config has no test set; set "
                "data.init_args.test_path (the paper scores the test set after the last epoch)"
            )
        names = list(init.get("metrics") or ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"))
        info.update(
            family="e2e",
            paper_task="e2e",
            metrics=[f"test/{m}" for m in names],
            select="last",
            aggregate="mean",
            test=True,
            paper_metrics={f"test/{m}": m for m in names},
        )
    elif cls == "CommonsenseDataModule":
        if init.get("test_dir") is None:
            raise SweepError(
                f"{where}: no metric to report: the commonsense config has no test sets; set "
                "data.init_args.test_dir (LLM-Adapters' dataset/ folder)"
            )
        from kasa_lightning.metrics.commonsense import COMMONSENSE_DATASETS

        sets = list(init.get("test_sets") or COMMONSENSE_DATASETS)
        names = [f"accuracy_{s}" for s in sets] + (["accuracy_average"] if len(sets) > 1 else [])
        info.update(
            family="commonsense",
            paper_task="commonsense",
            metrics=[f"test/{n}" for n in names],
            select="last",
            aggregate="mean",
            test=True,
            paper_metrics={f"test/{n}": n for n in names},
        )
    elif cls == "InstructionDataModule":
        if init.get("test_path") is None:
            raise SweepError(
                f"{where}: no metric to report: the instruction config has no test prompts; set "
                "data.init_args.test_path"
            )
        split = init.get("test_split")
        paper_task = {
            "test_summarize": "summarization",
            "test_classify": "classification",
            "test_coding": "coding",
            "test_closed_qa": "closed_qa",
        }.get(split, "mt_bench" if init.get("source") == "alpaca" else None)
        # the paper's number is an LLM judge's score (kasa_lightning.metrics.judge); the run logs ROUGE-L
        info.update(
            family="instruct",
            paper_task=paper_task,
            metrics=["test/rougeL"],
            select="last",
            aggregate="mean",
            test=True,
            paper_metrics={},
        )
    elif cls == "SentimentDemoDataModule":
        info.update(
            family="demo",
            paper_task=None,
            metrics=["val/accuracy"],
            select="best",
            aggregate="median",
            test=False,
            paper_metrics={},
        )
    elif metric is None:
        raise SweepError(
            f"{where}: no metric to report: the report does not know data class {cls or '(none)'!r}; "
            "name the metric with --metric (e.g. --metric val/accuracy or --metric test/accuracy)"
        )
    else:
        info.update(
            family="custom",
            paper_task=None,
            metrics=[],
            select="best",
            aggregate="median",
            test=metric.startswith("test/"),
            paper_metrics={},
        )
    if metric is not None:
        if not metric.startswith(("val/", "test/")):
            raise SweepError(f"--metric {metric}: name a logged validation or test metric, e.g. val/accuracy")
        info["metrics"] = [metric] + [m for m in info["metrics"] if m != metric]
        if metric.startswith("test/"):
            info.update(test=True, select="last", aggregate="mean")
    if test == "yes":
        info["test"] = True
    elif test == "no":
        if not any(m.startswith("val/") for m in info["metrics"]):
            raise SweepError(f"{where}: --test no leaves no metric to report (its metrics are {info['metrics']})")
        info["test"] = False
        info["metrics"] = [m for m in info["metrics"] if m.startswith("val/")]
    return info


def _parse_only_cli() -> type:
    from kasa_lightning.cli import KaSACLI

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
) -> list[tuple[Run, dict[str, Any]]]:
    """Every run of the sweep with its resolved config (nothing is written). ``method_overlays``: more methods,
    name -> overlay file (``--method_overlay``)."""
    method_overlays = dict(method_overlays or {})
    configs_dir = Path(configs_dir) if configs_dir else default_configs_dir()
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
    for path in [*configs, *overlays]:
        if not Path(path).is_file():
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
            info = _family(resolved, where, metric, test)
            for seed in seeds:
                run = Run(
                    task=name,
                    method=method,
                    seed=seed,
                    config=str(cfg),
                    overlays=list(overlays),
                    model=str(init.get("backbone")),
                    ablation=ablation,
                    **info,
                )
                runs.append((run, _finish_config(resolved, run.directory(output_dir).resolve(), seed)))
    return runs


# ---------------------------------------------------------------------------------------------------- state
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_state(run: Run, run_dir: Path) -> dict[str, Any]:
    """What the files of a run say: ``fit_done``, ``validated``, ``tested``, ``complete``, ``status``."""
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
    status = read_json(run_dir / "status.json") or {}
    return {
        "fit_done": fit_done,
        "validated": validated,
        "tested": tested,
        "complete": fit_done and validated and tested,
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


def _on_sigterm(signum: int, frame: Any) -> None:
    _Child.stop = signum
    proc = _Child.proc
    if proc is not None and proc.returncode is None:
        try:
            proc.send_signal(signum)  # the main thread's wait() returns when it has exited
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
        write_json(
            run_dir / "status.json", {"status": "running", "step": step, "started": started, "command": shlex.join(cmd)}
        )
        log = run_dir / f"{step}.log"
        with open(log, "a") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n")
            out.flush()
            _Child.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
            code = _Child.proc.wait()
            _Child.proc = None
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
            + ("the finished fit" if not state["fit_done"] else "the test/validate results"),
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


# ---------------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kasa_lightning sweep",
        description=__doc__.split("\n\n")[0],
        epilog="Any --trainer.*, --model.*, --data.* override is passed to every run (e.g. --trainer.max_steps 6).",
    )
    parser.add_argument("--config", action="append", required=True, help="a task config; repeat for several tasks")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        help="a config applied to every run (e.g. configs/strategies/bf16-mixed.yaml); repeatable",
    )
    parser.add_argument("--seeds", default="0", help="seeds: 0-4, 0,2,5 or 0-2,7 (default 0)")
    parser.add_argument("--methods", default=None, help=f"comma-separated, of {','.join(METHODS)} (default kasa)")
    parser.add_argument(
        "--ablation", action="store_true", help=f"the five ablation steps ({', '.join(ABLATION)}) instead of --methods"
    )
    parser.add_argument("--output_dir", "--output-dir", required=True, help="the sweep's root directory")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="write the configs and print one shell command per run; run nothing",
    )
    parser.add_argument(
        "--test",
        default="auto",
        choices=("auto", "yes", "no"),
        help="test last.ckpt after fit: auto = where the config has a test set (E2E, commonsense, instruction)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="the metric to report for a DataModule the report does not "
        "know (e.g. val/accuracy); it is reported first otherwise",
    )
    parser.add_argument(
        "--method_overlay",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="another method for --methods: its name and the overlay that makes it; repeatable",
    )
    parser.add_argument(
        "--configs_dir",
        default=None,
        help="the folder with methods/ and ablation/ (default: the repository's configs/)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    stray = [a for a in unknown if a.startswith("-") and not a.startswith(PASS_THROUGH)]
    if stray or (unknown and not unknown[0].startswith(PASS_THROUGH)):
        parser.error(
            f"unrecognized arguments {stray or unknown[:1]}: sweep passes only --trainer.*, --model.*, "
            "--data.* overrides on to the runs"
        )
    try:
        if args.ablation and args.methods:
            raise SweepError("--ablation and --methods exclude each other: the ablation runs its five steps")
        seeds = parse_seeds(args.seeds)
        extra = {}
        for item in args.method_overlay:
            name, sep, path = item.partition("=")
            if not sep or not name or not path or name in METHODS:
                raise SweepError(f"--method_overlay {item}: write NAME=FILE with a new name (not one of {METHODS})")
            extra[name] = path
        methods = None if args.ablation else parse_methods(args.methods or "kasa", tuple(extra))
        root = Path(args.output_dir)
        runs = plan(
            args.config,
            seeds,
            methods,
            root,
            args.overlay,
            unknown,
            ablation=args.ablation,
            configs_dir=args.configs_dir,
            metric=args.metric,
            test=args.test,
            method_overlays=extra,
        )
        write_plan(runs, root, argv)
    except SweepError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run, _ in runs:
            print(run.shell_command(root))
        return 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    failed = []
    try:
        for i, (run, _) in enumerate(runs, 1):
            t0 = time.time()
            print(f"[{i}/{len(runs)}] {run.rel_dir}: ", end="", flush=True)
            status = execute(run, root)
            if status.get("skipped"):
                print("done earlier, skipped", flush=True)
            elif status["status"] == "done":
                print(f"done ({time.time() - t0:.0f} s)", flush=True)
            else:
                failed.append(run.rel_dir)
                print(
                    f"FAILED in {status['step']}: {status['error'].splitlines()[-1] if status['error'] else ''} "
                    f"(see {run.directory(root) / 'status.json'})",
                    flush=True,
                )
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"sweep: {len(runs) - len(failed)} of {len(runs)} runs done"
        + (f"; failed: {failed}" if failed else "")
        + f". Report: python -m kasa_lightning report {root}"
    )
    return 1 if failed else 0
