"""Benchmark: fine-tuning quality of KaSA, LoRA, PiSSA, MiLoRA (ours) and PEFT's KaSA at equal budget.

All-MiniLM-L6-v2 (the packaged pretrained model) is fine-tuned on GLUE tasks from the local fixtures
(``<data-dir>/<TASK>/<training file>``; default SST-2, whose shared copy is ``train.from-test-labeled.tsv``, the
SST test sentences with their original labels). 20% of the training file is held out as the validation set by
``GLUEDataModule(val_from_train=0.2)`` with the DataModule's fixed seed (0), so every method and run sees the same
split, the same training order and the same batches. This script is a preset over ``python -m kasa_lightning
sweep`` and ``report``: it writes one config per task (``<output-dir>/presets/<task>.yaml``), sweeps it over the
seeds and methods (each run its own ``fit`` process, resumable: rerun with the same ``--output-dir`` to continue),
and takes the numbers and the statistics from the report (``kasa_lightning.stats``). Ours run as the sweep's
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
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.cli import add_common_arguments, pick_device
from benchmarks.machine import MINILM, Probe, quiet, thread_info, torch_threads
from benchmarks.models import TINY_BERT
from benchmarks.results import write_json
from benchmarks.stats import geometric_mean
from benchmarks.tables import markdown_table, ratios_table
from kasa_lightning import report, sweep
from kasa_lightning.stats import compare_means

R, ALPHA, LR, BETA, GAMMA, DATA_SEED = 8, 16.0, 2e-3, 1e-4, 1e-3, 0
MARGIN = 0.02  # equivalence margin of the TOST: +-2 points of the metric
COMPARED = (("kasa", "peft_kasa"), ("kasa", "lora"), ("kasa", "pissa"), ("kasa", "milora"))
# the training file of each task folder when --train-file is not given: GLUE's train.tsv; the shared copy of SST-2
# keeps the test sentences with their original SST labels instead (../shared/data/README.md)
TRAIN_FILES = ("train.tsv", "train.from-test-labeled.tsv")
METHODS = ("kasa", "lora", "pissa", "milora", "peft_kasa")
LABELS = {
    "kasa": "KaSA (ours)",
    "lora": "LoRA (ours)",
    "pissa": "PiSSA (ours)",
    "milora": "MiLoRA (ours)",
    "peft_kasa": "PEFT KaSA",
}
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
    from kasa_lightning import sweep

    overlay = root / "presets" / "peft_kasa.yaml"
    overlay.write_text("model:\n  class_path: peft_kasa.PeftKaSAModule\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(  # the runs import peft_kasa from this folder
        [str(Path(__file__).resolve().parent), *filter(None, [os.environ.get("PYTHONPATH")])]
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


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def fmt_mean_std(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f}" + ("" if math.isnan(s) else f" ± {100 * s:.1f}")


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

    runs: list[dict[str, Any]] = []
    for task in tasks:
        for method in methods:
            for seed in seeds:
                run_dir = root / task / method / f"seed{seed}"
                fit = (sweep.read_json(run_dir / "metrics.json") or {}).get("fit") or {}
                status = sweep.read_json(run_dir / "status.json") or {}
                best = {
                    f"{m}_best": max(e["metrics"][m] for e in fit.get("epochs", []) if m in e["metrics"])
                    for m in {k for e in fit.get("epochs", []) for k in e["metrics"]}
                }
                runs.append(
                    {
                        "task": task,
                        "method": method,
                        "seed": seed,
                        "status": status.get("status"),
                        "wall_s": status.get("wall_s"),
                        "steps": fit.get("global_step", 0),
                        "metrics": best,
                    }
                )
    failed = [r for r in runs if r["status"] != "done"]
    if failed:
        names = [(r["task"], r["method"], r["seed"]) for r in failed]
        raise SystemExit(
            f"quality: {len(failed)} run(s) did not finish: {names} (see {root}/<task>/<method>/seed<k>/status.json)"
        )

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for e in entries:
        metric = e["metric"].split("/", 1)[1]
        if e["values"]:
            m, sd = mean_std(e["values"])
            cell = table.setdefault(e["task"], {}).setdefault(e["method"], {})
            cell[metric] = {"mean": m, "std": sd, "values": e["values"]}
    for task in tasks:
        for method in methods:
            walls = [r["wall_s"] for r in runs if r["task"] == task and r["method"] == method and r["wall_s"]]
            table.setdefault(task, {}).setdefault(method, {})["wall_s_mean"] = statistics.mean(walls) if walls else 0.0

    # ours against theirs, per task, on the task's first metric: the ratio of the means and the two t-tests
    ratios: dict[str, float] = {}
    comparisons: dict[str, dict[str, Any]] = {}
    for a, b in COMPARED:
        per_task = []
        for task in tasks:
            metric = metrics[task][0]
            if a in table[task] and b in table[task] and metric in table[task][a] and metric in table[task][b]:
                va, vb = table[task][a][metric]["values"], table[task][b][metric]["values"]
                value = statistics.mean(va) / max(statistics.mean(vb), 1e-12)
                ratios[f"{a}_vs_{b}_{metric}_{task}"] = value
                if metric == "accuracy":
                    per_task.append(value)
                comparisons[f"{a}_vs_{b}_{task}"] = {"metric": metric, **compare_means(va, vb, margin).as_dict()}
        if per_task:
            ratios[f"{a}_vs_{b}_accuracy"] = geometric_mean(per_task)
    ratios = dict(sorted(ratios.items(), key=lambda kv: (kv[0].count("_"), kv[0])))

    honest = (
        f"{mode_name.upper()} RUN: {len(seeds)} seed(s), {max_train or 'all'} training examples, {epochs} epoch(s). "
        "These numbers are NOT statistically meaningful; they only show that every method trains end to end."
        if mode_name != "full"
        else f"{len(seeds)} seeds per method; the tests below treat the seeds as the samples."
    )
    print(f"\n# Fine-tuning quality on GLUE (validation = 20% held out of the training file), {mode_name} mode")
    print(
        f"backbone {'tiny BERT (smoke)' if mode.backbone_config else 'all-MiniLM-L6-v2'}, r={R}, alpha={ALPHA:g}, "
        f"lr {mode.lr:g}, batch {mode.batch_size}, max length {mode.max_length}, {epochs} epoch(s), "
        f"seeds {list(seeds)}, device {device}, torch threads {tinfo['torch_threads']}, wall {wall:.0f} s"
    )
    print(f"\n**{honest}**\n")
    for task in tasks:
        shown = [m for m in metrics[task] if any(m in e for e in table[task].values())]
        first = shown[0] if shown else metrics[task][0]
        headers = ["method"] + [f"{m} % (mean ± std)" for m in shown] + [f"per seed ({first})", "time per run"]
        rows = []
        for method in methods:
            e = table[task][method]
            row = [LABELS[method]] + [fmt_mean_std(e[m]["values"]) if m in e else "-" for m in shown]
            row += [
                " ".join(f"{100 * v:.1f}" for v in e[first]["values"]) if first in e else "-",
                f"{e['wall_s_mean']:.0f} s",
            ]
            rows.append(row)
        print(f"## {task.upper()} ({files[task]}, 20% held out for validation; best validation epoch)\n")
        print(markdown_table(headers, rows))
        print()
    if comparisons:
        print(
            f"Ours against theirs (Welch's t-test, two-sided; equivalence: two one-sided t-tests with margin "
            f"±{100 * margin:g} points; alpha 0.05, CI at 90%):\n"
        )
        rows = []
        for key, c in comparisons.items():
            task = key.rsplit("_", 1)[1]
            a, b = key[: -len(task) - 1].split("_vs_")
            if c["p_difference"] is None:
                rows.append((task, f"{LABELS[a]} - {LABELS[b]}", c["metric"], "-", "-", "-", c["reason"]))
                continue
            verdict = ("different" if c["distinguishable"] else "not distinguishable") + (
                ", equivalent" if c["equivalent"] else ", equivalence not shown"
            )
            rows.append(
                (
                    task,
                    f"{LABELS[a]} - {LABELS[b]}",
                    c["metric"],
                    f"{100 * c['difference']:+.2f}",
                    f"[{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}]",
                    f"{c['p_difference']:.3f} / {c['p_equivalence']:.3f}",
                    verdict,
                )
            )
        print(
            markdown_table(
                ["task", "difference", "metric", "mean (points)", "90% CI", "p diff / p equiv", "verdict"],
                rows,
                align="lllrrrl",
            )
        )
        print()
    print(
        "Ratios (mean of the best-epoch metric, ours / theirs; unsuffixed = accuracy, geometric mean over the tasks):\n"
    )
    print(ratios_table(ratios))
    print("\n" + probe.describe())

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
