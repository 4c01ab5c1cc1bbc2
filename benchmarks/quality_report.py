"""The numbers and tables of ``benchmarks.quality``: the runs' own metric files read back, the report's entries as a
per-task, per-method table, ours against theirs (ratios of the means, Welch and TOST), and the printed report."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.machine import Probe
from benchmarks.stats import geometric_mean
from benchmarks.tables import markdown_table, ratios_table
from kasa_lightning.experiments import sweep
from kasa_lightning.experiments.stats import compare_means

COMPARED = (("kasa", "peft_kasa"), ("kasa", "lora"), ("kasa", "pissa"), ("kasa", "milora"))
LABELS = {
    "kasa": "KaSA (ours)",
    "lora": "LoRA (ours)",
    "pissa": "PiSSA (ours)",
    "milora": "MiLoRA (ours)",
    "peft_kasa": "PEFT KaSA",
}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def fmt_mean_std(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f}" + ("" if math.isnan(s) else f" ± {100 * s:.1f}")


def collect_runs(
    root: Path, tasks: tuple[str, ...], methods: tuple[str, ...], seeds: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Per run: status, wall time, steps and the best epoch of each metric, from the run's own files."""
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
    return runs


def build_table(
    entries: list[dict[str, Any]], runs: list[dict[str, Any]], tasks: tuple[str, ...], methods: tuple[str, ...]
) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> method -> metric -> mean, std and the per-seed values (and the mean wall time per run)."""
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
    return table


def compare(
    table: dict[str, dict[str, dict[str, Any]]], tasks: tuple[str, ...], metrics: dict[str, Any], margin: float
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """The ratios (ours / theirs) and the Welch / TOST comparisons on each task's first metric."""
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
    return ratios, comparisons


def print_report(
    *,
    r: int,
    alpha: float,
    mode_name: str,
    mode: Any,
    epochs: int,
    seeds: tuple[int, ...],
    device: str,
    tinfo: dict[str, Any],
    wall: float,
    honest: str,
    tasks: tuple[str, ...],
    methods: tuple[str, ...],
    metrics: dict[str, Any],
    files: dict[str, str],
    table: dict[str, dict[str, dict[str, Any]]],
    comparisons: dict[str, dict[str, Any]],
    margin: float,
    ratios: dict[str, float],
    probe: Probe,
) -> None:
    """The markdown report: settings, the per-task tables, ours against theirs and the ratios."""
    print(f"\n# Fine-tuning quality on GLUE (validation = 20% held out of the training file), {mode_name} mode")
    print(
        f"backbone {'tiny BERT (smoke)' if mode.backbone_config else 'all-MiniLM-L6-v2'}, r={r}, alpha={alpha:g}, "
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
