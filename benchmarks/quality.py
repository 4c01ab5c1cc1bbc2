"""Benchmark: fine-tuning quality of KaSA, LoRA, PiSSA, MiLoRA (ours) and PEFT's KaSA at equal budget.

All-MiniLM-L6-v2 (the packaged pretrained model) is fine-tuned on GLUE tasks from the local fixtures
(``<data-dir>/<TASK>/<training file>``; default SST-2, whose shared copy is ``train.from-test-labeled.tsv``, the
SST test sentences with their original labels). 20% of the training file is held out as the validation set by
``GLUEDataModule(val_from_train=0.2)`` with the DataModule's fixed seed (0), so every method and run sees the same
split, the same training order and the same batches. Every method runs through the same Lightning ``Trainer``
and ``KaSAModule`` code: ours through ``KaSAModule`` itself, PEFT's KaSA through a subclass that builds a
``peft`` model (``LoraConfig(kasa_config=KasaConfig(beta, gamma))``) in ``configure_model`` and returns
``model._get_kasa_loss()`` as its regulariser; so the optimizer (AdamW over the trainable parameters, lr 2e-3),
the schedule (linear warmup 6%, linear decay), the metrics and the loop are shared. r=8, alpha=16, dropout 0,
targets query/value, the classifier trained, beta=1e-4 and gamma=1e-3 (KaSA only), batch 32, 3 epochs, max
length 128 (quick: 96). The learning rate is higher than the paper's 4e-4 to 5e-4 because the budget is a few
hundred steps, not 10 to 100 epochs.

The seeds (``--seeds``, default 0 1 2 3 4; quick: 0) set the initialisation of the classifier and the adapters
and the dropout masks (``lightning.seed_everything``); the split and data order stay fixed. Reported per method
and task: mean and standard deviation over seeds of the best validation epoch of each metric (as the paper
reports the best validation epoch), and for our KaSA against each other method, on the task's first metric:
Welch's t-test (are the means different?) and a TOST equivalence test (is the difference inside +-``--margin``,
default 2 points?), with the seeds as the samples. ``--quick`` (1 seed, 160 training and 96 validation examples
of RTE and MRPC, max length 96, 1 epoch) only shows that everything runs: its numbers are NOT statistically
meaningful.

    python benchmarks/quality.py [--quick] [--json PATH] [--seeds 0 1 2 3 4] [--tasks sst2,mrpc] [--epochs N]
                                 [--methods kasa,lora,...] [--lr LR] [--batch-size N] [--margin 0.02]
                                 [--max-train-samples N] [--max-eval-samples N] [--data-dir DIR]
                                 [--train-file NAME] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # "import _common" from anywhere
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    MINILM,
    Probe,
    add_common_arguments,
    compare_means,
    geometric_mean,
    markdown_table,
    pick_device,
    quiet,
    ratios_table,
    thread_info,
    torch_threads,
    write_json,
)

from kasa_lightning import AdapterConfig, AdapterLossTerms, KaSAModule  # noqa: E402

R, ALPHA, LR, BETA, GAMMA, DATA_SEED = 8, 16.0, 2e-3, 1e-4, 1e-3, 0
MARGIN = 0.02  # equivalence margin of the TOST: +-2 points of the metric
COMPARED = (("kasa", "peft_kasa"), ("kasa", "lora"), ("kasa", "pissa"), ("kasa", "milora"))
# the training file of each task folder when --train-file is not given: GLUE's train.tsv; the shared copy of SST-2
# keeps the test sentences with their original SST labels instead (../shared/data/README.md)
TRAIN_FILES = ("train.tsv", "train.from-test-labeled.tsv")
METHODS = ("kasa", "lora", "pissa", "milora", "peft_kasa")
LABELS = {"kasa": "KaSA (ours)", "lora": "LoRA (ours)", "pissa": "PiSSA (ours)", "milora": "MiLoRA (ours)",
          "peft_kasa": "PEFT KaSA"}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128}  # --smoke only


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
    "quick": Mode(seeds=(0,), epochs=1, max_train=160, max_eval=96, batch_size=16, max_length=96,
                  tasks=("rte", "mrpc")),
    "smoke": Mode(seeds=(0,), epochs=1, max_train=16, max_eval=16, batch_size=8, max_length=32, tasks=("rte",),
                  backbone_config=TINY_BERT),
}


class PeftKaSAModule(KaSAModule):
    """``KaSAModule`` whose backbone carries Hugging Face PEFT's KaSA instead of ours: same loop, optimizer,
    schedule and metrics; the regulariser is ``model._get_kasa_loss()`` (PEFT never adds it by itself)."""

    def configure_model(self, initialize: bool = True) -> None:
        if self.model is not None:
            return
        import peft

        model = self.build_backbone()
        model.train()
        a = self.adapter_config
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        cfg = peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=a.target_modules,
                              modules_to_save=[m for m in a.modules_to_save if m in present] or None,
                              kasa_config=peft.KasaConfig(beta=a.beta, gamma=a.gamma))
        self.model = peft.get_peft_model(model, cfg)

    def regularizer(self) -> AdapterLossTerms:
        loss = self.model._get_kasa_loss()
        if not torch.is_tensor(loss):
            loss = torch.tensor(float(loss))
        zero = loss.new_zeros(())
        return AdapterLossTerms(loss=loss, l2=zero, l3=zero, per_layer={})


def make_module(method: str, num_labels: int, mode: Mode) -> KaSAModule:
    base_method = "kasa" if method == "peft_kasa" else method
    cfg = AdapterConfig(method=base_method, r=R, alpha=ALPHA, dropout=0.0, target_modules=["query", "value"],
                        modules_to_save=["classifier"],
                        beta=BETA if base_method == "kasa" else None, gamma=GAMMA if base_method == "kasa" else None)
    cls = PeftKaSAModule if method == "peft_kasa" else KaSAModule
    extra = {"backbone_config": mode.backbone_config} if mode.backbone_config else {}
    return cls(backbone=MINILM, task="classification", num_labels=num_labels, adapter=cfg,
               optimizer=functools.partial(torch.optim.AdamW, lr=mode.lr), warmup_ratio=0.06, **extra)


def run_one(method: str, seed: int, data: Any, mode: Mode, device: str, root: str) -> dict[str, Any]:
    L.seed_everything(seed, workers=True, verbose=False)
    module = make_module(method, data.num_labels, mode)
    trainer = L.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_epochs=mode.epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return {"method": method, "seed": seed, "wall_s": wall, "steps": trainer.global_step, "metrics": metrics}


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
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2 3 4; quick 0)")
    parser.add_argument("--tasks", default=None, help="comma-separated GLUE tasks (default sst2; quick rte,mrpc)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate (default {LR:g})")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default 32; quick 16)")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="a local GLUE directory (<dir>/RTE/train.tsv)")
    parser.add_argument("--train-file", default=None,
                        help=f"the training file in each task folder (default: the first of {', '.join(TRAIN_FILES)} "
                             "that exists)")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help=f"equivalence margin of the TOST, as a fraction of the metric (default {MARGIN:g})")
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
    mode = Mode(seeds=seeds, epochs=epochs, max_train=max_train, max_eval=max_eval, batch_size=args.batch_size or mode.batch_size,
                max_length=mode.max_length, lr=args.lr or mode.lr, tasks=tasks, backbone_config=mode.backbone_config)
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} does not exist (a local GLUE directory, <dir>/SST-2/... is needed)")
    if not 0 < args.margin < 1:
        parser.error(f"--margin {args.margin} must be a fraction of the metric in (0, 1), e.g. 0.02 for 2 points")
    margin = args.margin
    device = pick_device(args.device)

    from kasa_lightning.datamodules.glue import TASKS, GLUEDataModule

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown GLUE tasks {unknown}; choose from {sorted(TASKS)}")
    files = {task: train_file(Path(args.data_dir) / TASKS[task].folder, args.train_file, parser) for task in tasks}
    metrics = {task: TASKS[task].metrics for task in tasks}

    runs: list[dict[str, Any]] = []
    sizes: dict[str, dict[str, int]] = {}
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as root:
        probe = Probe().start()
        t0 = time.perf_counter()
        for task in tasks:
            data = GLUEDataModule(task=task, data_dir=args.data_dir, train_file=files[task], val_from_train=0.2,
                                  max_train_samples=max_train,
                                  max_eval_samples=max_eval, tokenizer=MINILM, batch_size=mode.batch_size,
                                  max_length=mode.max_length, seed=DATA_SEED)
            data.setup("fit")
            sizes[task] = {"train": len(data.train_set), "validation": len(data.val_set)}
            for seed in seeds:
                for method in methods:
                    run = run_one(method, seed, data, mode, device, root)
                    run["task"] = task
                    runs.append(run)
                    print(f"  {task} seed {seed} {LABELS[method]}: "
                          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(run["metrics"].items()) if "_best" in k)
                          + f" ({run['steps']} steps, {run['wall_s']:.0f} s)", flush=True)
        wall = time.perf_counter() - t0
        probe.stop()
        tinfo = thread_info()

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        for method in methods:
            rs = [r for r in runs if r["task"] == task and r["method"] == method]
            entry: dict[str, Any] = {}
            for metric in metrics[task]:
                values = [r["metrics"][f"val/{metric}_best"] for r in rs if f"val/{metric}_best" in r["metrics"]]
                if values:
                    m, s = mean_std(values)
                    entry[metric] = {"mean": m, "std": s, "values": values}
            entry["wall_s_mean"] = statistics.mean(r["wall_s"] for r in rs)
            table.setdefault(task, {})[method] = entry

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
                comparisons[f"{a}_vs_{b}_{task}"] = {"metric": metric, **compare_means(va, vb, margin)}
        if per_task:
            ratios[f"{a}_vs_{b}_accuracy"] = geometric_mean(per_task)
    ratios = dict(sorted(ratios.items(), key=lambda kv: (kv[0].count("_"), kv[0])))

    honest = (
        f"{mode_name.upper()} RUN: {len(seeds)} seed(s), {max_train or 'all'} training examples, {epochs} epoch(s). "
        "These numbers are NOT statistically meaningful; they only show that every method trains end to end."
        if mode_name != "full" else
        f"{len(seeds)} seeds per method; the tests below treat the seeds as the samples."
    )
    print(f"\n# Fine-tuning quality on GLUE (validation = 20% held out of the training file), {mode_name} mode")
    print(f"backbone {'tiny BERT (smoke)' if mode.backbone_config else 'all-MiniLM-L6-v2'}, r={R}, alpha={ALPHA:g}, "
          f"lr {mode.lr:g}, batch {mode.batch_size}, max length {mode.max_length}, {epochs} epoch(s), "
          f"seeds {list(seeds)}, device {device}, torch threads {tinfo['torch_threads']}, wall {wall:.0f} s")
    print(f"\n**{honest}**\n")
    for task in tasks:
        shown = [m for m in metrics[task] if any(m in e for e in table[task].values())]
        first = shown[0] if shown else metrics[task][0]
        headers = ["method"] + [f"{m} % (mean ± std)" for m in shown] + [f"per seed ({first})", "time per run"]
        rows = []
        for method in methods:
            e = table[task][method]
            row = [LABELS[method]] + [fmt_mean_std(e[m]["values"]) if m in e else "-" for m in shown]
            row += [" ".join(f"{100 * v:.1f}" for v in e[first]["values"]) if first in e else "-",
                    f"{e['wall_s_mean']:.0f} s"]
            rows.append(row)
        print(f"## {task.upper()} ({files[task]}: train {sizes[task]['train']}, validation "
              f"{sizes[task]['validation']}; best validation epoch)\n")
        print(markdown_table(headers, rows))
        print()
    if comparisons:
        print(f"Ours against theirs (Welch's t-test, two-sided; equivalence: two one-sided t-tests with margin "
              f"±{100 * margin:g} points; alpha 0.05, CI at 90%):\n")
        rows = []
        for key, c in comparisons.items():
            task = key.rsplit("_", 1)[1]
            a, b = key[: -len(task) - 1].split("_vs_")
            if c["p_difference"] is None:
                rows.append((task, f"{LABELS[a]} - {LABELS[b]}", c["metric"], "-", "-", "-", c["reason"]))
                continue
            verdict = ("different" if c["distinguishable"] else "not distinguishable") + (
                ", equivalent" if c["equivalent"] else ", equivalence not shown")
            rows.append((task, f"{LABELS[a]} - {LABELS[b]}", c["metric"], f"{100 * c['difference']:+.2f}",
                         f"[{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}]",
                         f"{c['p_difference']:.3f} / {c['p_equivalence']:.3f}", verdict))
        print(markdown_table(["task", "difference", "metric", "mean (points)", "90% CI", "p diff / p equiv",
                              "verdict"], rows, align="lllrrrl"))
        print()
    print("Ratios (mean of the best-epoch metric, ours / theirs; unsuffixed = accuracy, geometric mean over the "
          "tasks):\n")
    print(ratios_table(ratios))
    print("\n" + probe.describe())

    result = {
        "benchmark": "quality", "mode": mode_name, "device": device, "threads": tinfo,
        "settings": {"r": R, "alpha": ALPHA, "lr": mode.lr, "beta": BETA, "gamma": GAMMA, "epochs": epochs,
                     "batch_size": mode.batch_size, "max_length": mode.max_length, "seeds": list(seeds),
                     "data_seed": DATA_SEED, "val_from_train": 0.2, "max_train_samples": max_train,
                     "max_eval_samples": max_eval, "data_dir": args.data_dir, "tasks": list(tasks),
                     "methods": list(methods), "warmup_ratio": 0.06, "schedule": "linear",
                     "equivalence_margin": margin},
        "sizes": sizes, "train_files": files, "metrics": metrics, "note": honest, "comparisons": comparisons, "wall_s": wall, "probe_gflops": probe.as_dict(), "runs": runs,
        "table": table, "ratios": ratios,
    }
    if args.json:
        write_json(args.json, result, device)
    return result


if __name__ == "__main__":
    main()
