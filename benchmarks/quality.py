"""Benchmark: fine-tuning quality of KaSA, LoRA, PiSSA, MiLoRA (ours) and PEFT's KaSA at equal budget.

All-MiniLM-L6-v2 (the packaged pretrained model) is fine-tuned on GLUE tasks from the local fixtures
(``<data-dir>/<TASK>/<training file>``; default SST-2, whose shared copy is ``train.from-test-labeled.tsv``, the
SST test sentences with their original labels). 20% of the training file is held out as the validation set by
``GLUEDataModule(val_from_train=0.2)`` with the DataModule's fixed seed (0), so every method and run sees the same
split, the same training order and the same batches. This script is a preset over ``python -m kasa_lightning
sweep`` and ``report``: it writes one config per task (``<output-dir>/presets/<task>.yaml``), sweeps it over the
seeds and methods (each run its own ``fit`` process, resumable: rerun with the same ``--output-dir`` to continue),
and takes the numbers and the statistics from the report (``kasa_lightning.experiments.stats``). Ours run as the sweep's
methods (``configs/methods/``); PEFT's KaSA is the extra method ``peft_kasa``: ``benchmarks/peft_kasa.py``, a
``KaSAModule`` subclass that builds a ``peft`` model (``LoraConfig(kasa_config=KasaConfig(beta, gamma))``) in
``configure_model`` and returns ``model._get_kasa_loss()`` as its regulariser; so the optimizer (AdamW over the
trainable parameters, lr 2e-3), the schedule (linear warmup 6%, linear decay), the metrics and the loop are
shared. r=8, alpha=16, dropout 0, targets query/value, the classifier trained, beta=1e-4 and gamma=1e-3 (KaSA
only), batch 32, 3 epochs, max length 128 (quick: 96). The learning rate is higher than the paper's 4e-4 to 5e-4
because the budget is a few
hundred steps, not 10 to 100 epochs.

The seeds (``--seeds``, default 0 1 2 3 4; quick: 0) set the initialisation of the classifier and the adapters
and the dropout masks (``lightning.seed_everything``); the split and data order stay fixed. Reported per method
and task: mean and standard deviation over seeds of the best validation epoch of each metric (as the paper
reports the best validation epoch), and for our KaSA against each other method, on the task's first metric:
Welch's t-test (are the means different?) and a TOST equivalence test (is the difference inside +-``--margin``,
default 2 points?), with the seeds as the samples. ``--quick`` (1 seed, 160 training and 96 validation examples
of RTE and MRPC, max length 96, 1 epoch) only shows that everything runs: its numbers are NOT statistically
meaningful.

    python -m benchmarks.quality [--quick] [--json PATH] [--seeds 0 1 2 3 4] [--tasks sst2,mrpc] [--epochs N]
                                 [--methods kasa,lora,...] [--lr LR] [--batch-size N] [--margin 0.02]
                                 [--max-train-samples N] [--max-eval-samples N] [--data-dir DIR]
                                 [--train-file NAME] [--threads N] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.cli import add_common_arguments, pick_device
from benchmarks.machine import MINILM, Probe, quiet, thread_info, torch_threads
from benchmarks.models import TINY_BERT
from benchmarks.quality_report import build_table, collect_runs, compare, print_report
from benchmarks.results import write_json
from kasa_lightning.experiments import report, sweep

R, ALPHA, LR, BETA, GAMMA, DATA_SEED = 8, 16.0, 2e-3, 1e-4, 1e-3, 0
MARGIN = 0.02  # equivalence margin of the TOST: +-2 points of the metric
# the training file of each task folder when --train-file is not given: GLUE's train.tsv; the shared copy of SST-2
# keeps the test sentences with their original SST labels instead (../shared/data/README.md)
TRAIN_FILES = ("train.tsv", "train.from-test-labeled.tsv")
METHODS = ("kasa", "lora", "pissa", "milora", "peft_kasa")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@dataclass
class Mode:
    seeds: tuple[int, ...]
    epochs: int
    max_train: int | None
    max_eval: int | None
    batch_size: int
    max_length: int = 128
    lr: float = LR
    tasks: tuple[str, ...] = ("sst2",)
    backbone_config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


MODES = {
    "full": Mode(seeds=(0, 1, 2, 3, 4), epochs=3, max_train=None, max_eval=None, batch_size=32, tasks=("sst2",)),
    "quick": Mode(
        seeds=(0,), epochs=1, max_train=160, max_eval=96, batch_size=16, max_length=96, tasks=("rte", "mrpc")
    ),
    "smoke": Mode(
        seeds=(0,),
        epochs=1,
        max_train=16,
        max_eval=16,
        batch_size=8,
        max_length=32,
        tasks=("rte",),
        backbone_config=TINY_BERT,
    ),
}


def task_config(task: str, train_file: str, mode: Mode, data_dir: str, device: str) -> dict[str, Any]:
    """The sweep config of one GLUE task at this benchmark's budget (KaSA; the sweep's method overlays make the
    baselines)."""
    model: dict[str, Any] = {
        "backbone": MINILM,
        "task": "classification",
        "adapter": {
            "method": "kasa",
            "r": R,
            "alpha": ALPHA,
            "dropout": 0.0,
            "target_modules": ["query", "value"],
            "modules_to_save": ["classifier"],
            "beta": BETA,
            "gamma": GAMMA,
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": mode.lr}},
        "warmup_ratio": 0.06,
    }
    if mode.backbone_config:
        model["backbone_config"] = mode.backbone_config
    data = {
        "task": task,
        "data_dir": data_dir,
        "train_file": train_file,
        "val_from_train": 0.2,
        "max_train_samples": mode.max_train,
        "max_eval_samples": mode.max_eval,
        "batch_size": mode.batch_size,
        "max_length": mode.max_length,
        "seed": DATA_SEED,
    }
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "gpu" if device.startswith("cuda") else "cpu",
            "devices": 1,
            "max_epochs": mode.epochs,
            "logger": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        "model": {"class_path": "kasa_lightning.KaSAModule", "init_args": model},
        "data": {"class_path": "kasa_lightning.datamodules.GLUEDataModule", "init_args": data},
    }


def run_sweep(
    configs: list[Path], seeds: tuple[int, ...], methods: tuple[str, ...], root: Path, threads: int | None
) -> None:
    """``python -m kasa_lightning sweep`` over the task configs; PEFT's KaSA is the extra method ``peft_kasa``."""

    overlay = root / "presets" / "peft_kasa.yaml"
    overlay.write_text("model:\n  class_path: benchmarks.peft_kasa.PeftKaSAModule\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(  # the runs import benchmarks.peft_kasa from the repository root
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    args = [a for c in configs for a in ("--config", str(c))]
    args += [
        "--seeds",
        ",".join(map(str, seeds)),
        "--methods",
        ",".join(methods),
        "--output_dir",
        str(root),
        "--method_overlay",
        f"peft_kasa={overlay}",
    ]
    code = sweep.main(args)
    if code == 2:
        raise SystemExit("quality: the sweep refused its input (message above)")


def train_file(folder: Path, requested: str | None, parser: argparse.ArgumentParser) -> str:
    """The training file to read in ``folder``: ``requested``, or the first of ``TRAIN_FILES`` that exists."""
    names = [requested] if requested else list(TRAIN_FILES)
    for name in names:
        if (folder / name).is_file():
            return name
    parser.error(f"--train-file: none of {names} is in {folder}; name the task's training file with --train-file")
    raise AssertionError  # parser.error exits


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2 3 4; quick 0)"
    )
    parser.add_argument("--tasks", default=None, help="comma-separated GLUE tasks (default sst2; quick rte,mrpc)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate (default {LR:g})")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default 32; quick 16)")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="a local GLUE directory (<dir>/RTE/train.tsv)")
    parser.add_argument(
        "--train-file",
        default=None,
        help=f"the training file in each task folder (default: the first of {', '.join(TRAIN_FILES)} that exists)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="the sweep directory (default: a new temporary one); "
        "rerunning with the same directory skips finished runs",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        help=f"equivalence margin of the TOST, as a fraction of the metric (default {MARGIN:g})",
    )
    args = parser.parse_args(argv)
    quiet()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    seeds = tuple(args.seeds) if args.seeds else mode.seeds
    tasks = tuple(args.tasks.split(",")) if args.tasks else mode.tasks
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    epochs = args.epochs or mode.epochs
    max_train = args.max_train_samples if args.max_train_samples is not None else mode.max_train
    max_eval = args.max_eval_samples if args.max_eval_samples is not None else mode.max_eval
    mode = Mode(
        seeds=seeds,
        epochs=epochs,
        max_train=max_train,
        max_eval=max_eval,
        batch_size=args.batch_size or mode.batch_size,
        max_length=mode.max_length,
        lr=args.lr or mode.lr,
        tasks=tasks,
        backbone_config=mode.backbone_config,
    )
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} does not exist (a local GLUE directory, <dir>/SST-2/... is needed)")
    if not 0 < args.margin < 1:
        parser.error(f"--margin {args.margin} must be a fraction of the metric in (0, 1), e.g. 0.02 for 2 points")
    margin = args.margin
    device = pick_device(args.device)

    from kasa_lightning.datamodules.glue import TASKS

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown GLUE tasks {unknown}; choose from {sorted(TASKS)}")
    files = {task: train_file(Path(args.data_dir) / TASKS[task].folder, args.train_file, parser) for task in tasks}
    metrics = {task: TASKS[task].metrics for task in tasks}

    root = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="quality-"))
    (root / "presets").mkdir(parents=True, exist_ok=True)
    configs = []
    for task in tasks:
        path = root / "presets" / f"{task}.yaml"
        path.write_text(yaml.safe_dump(task_config(task, files[task], mode, args.data_dir, device), sort_keys=False))
        configs.append(path)
    with torch_threads(args.threads):
        probe = Probe().start()
        t0 = time.perf_counter()
        run_sweep(configs, seeds, methods, root, args.threads)
        entries = report.report(root, reference="kasa", margin=margin)
        wall = time.perf_counter() - t0
        probe.stop()
        tinfo = thread_info()

    runs = collect_runs(root, tasks, methods, seeds)
    failed = [r for r in runs if r["status"] != "done"]
    if failed:
        names = [(r["task"], r["method"], r["seed"]) for r in failed]
        raise SystemExit(
            f"quality: {len(failed)} run(s) did not finish: {names} (see {root}/<task>/<method>/seed<k>/status.json)"
        )

    table = build_table(entries, runs, tasks, methods)
    ratios, comparisons = compare(table, tasks, metrics, margin)

    honest = (
        f"{mode_name.upper()} RUN: {len(seeds)} seed(s), {max_train or 'all'} training examples, {epochs} epoch(s). "
        "These numbers are NOT statistically meaningful; they only show that every method trains end to end."
        if mode_name != "full"
        else f"{len(seeds)} seeds per method; the tests below treat the seeds as the samples."
    )
    print_report(
        r=R,
        alpha=ALPHA,
        mode_name=mode_name,
        mode=mode,
        epochs=epochs,
        seeds=seeds,
        device=device,
        tinfo=tinfo,
        wall=wall,
        honest=honest,
        tasks=tasks,
        methods=methods,
        metrics=metrics,
        files=files,
        table=table,
        comparisons=comparisons,
        margin=margin,
        ratios=ratios,
        probe=probe,
    )

    result = {
        "benchmark": "quality",
        "mode": mode_name,
        "device": device,
        "threads": tinfo,
        "settings": {
            "r": R,
            "alpha": ALPHA,
            "lr": mode.lr,
            "beta": BETA,
            "gamma": GAMMA,
            "epochs": epochs,
            "batch_size": mode.batch_size,
            "max_length": mode.max_length,
            "seeds": list(seeds),
            "data_seed": DATA_SEED,
            "val_from_train": 0.2,
            "max_train_samples": max_train,
            "max_eval_samples": max_eval,
            "data_dir": args.data_dir,
            "tasks": list(tasks),
            "methods": list(methods),
            "warmup_ratio": 0.06,
            "schedule": "linear",
            "equivalence_margin": margin,
        },
        "sweep_dir": str(root) if args.output_dir else None,
        "train_files": files,
        "metrics": metrics,
        "note": honest,
        "comparisons": comparisons,
        "wall_s": wall,
        "probe_gflops": probe.as_dict(),
        "runs": runs,
        "table": table,
        "ratios": ratios,
    }
    if args.json:
        write_json(args.json, result, device)
    if not args.output_dir:
        shutil.rmtree(root, ignore_errors=True)  # a temporary sweep; --output-dir keeps it
    return result


if __name__ == "__main__":
    main()
