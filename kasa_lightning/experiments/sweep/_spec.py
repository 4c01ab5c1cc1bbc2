"""A sweep's vocabulary: its constants, its error, the seeds/methods/task names of its input, and ``Run`` (one run,
what ``run.json`` holds) with the JSON helpers for the files a run leaves. Everything else in the sweep (the plan,
the protocols, the execution, the report) builds on these names; ``kasa_lightning.experiments.sweep`` re-exports them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    paper_task: str | None  # the task's key in kasa_lightning/experiments/paper/paper_results.json
    metrics: list[str]  # logged names, e.g. "val/accuracy", "test/BLEU"
    paper_metrics: dict[str, str] = field(default_factory=dict)  # logged name -> the paper's metric key
    select: str = "best"  # per run: "best" validation epoch or "last" value
    aggregate: str = "median"  # over seeds: "median" or "mean" (the paper's headline number)
    validate_last: bool = False  # validate last.ckpt when training stopped after its last validation
    test: bool = False  # test last.ckpt after fit
    ablation: bool = False
    harness: dict[str, Any] | None = None  # lm-eval after fit (sweep --eval_tasks): tasks and eval options

    @property
    def rel_dir(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"

    def directory(self, root: Path) -> Path:
        return Path(root) / self.rel_dir

    def commands(self, root: Path, python: str = sys.executable) -> list[list[str]]:
        """The process(es) of this run, fresh (no resume): fit, [validate last.ckpt], [test last.ckpt],
        [eval last.ckpt]."""
        run = self.directory(root).resolve()
        config, last = str(run / RESOLVED), str(run / "checkpoints" / "last.ckpt")
        base = [python, "-m", "kasa_lightning"]
        cmds = [base + ["fit", "--config", config]]
        if self.validate_last:
            cmds.append(base + ["validate", "--config", config, "--ckpt_path", last])
        if self.test:
            cmds.append(base + ["test", "--config", config, "--ckpt_path", last])
        if self.harness:
            from kasa_lightning.harness import eval_command

            cmds.append(eval_command(base, config, last, str(run / "eval.json"), self.harness))
        return cmds

    def shell_command(self, root: Path, python: str = sys.executable, cwd: str | None = None) -> str:
        """One shell line: ``cd`` to the sweep's working directory (relative paths in the config, such as a
        ``data_dir``, are relative to it), then the run's processes joined by ``&&``."""
        steps = " && ".join(shlex.join(c) for c in self.commands(root, python))
        return f"cd {shlex.quote(cwd or os.getcwd())} && {steps}"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def unreadable_json(path: Path) -> str | None:
    """Why the existing file ``path`` cannot be read as a JSON object (None when it can, or does not exist)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{type(err).__name__}: {err}"
    return None if isinstance(data, dict) else f"it holds a {type(data).__name__}, not a JSON object"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
