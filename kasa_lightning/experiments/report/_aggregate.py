"""The report's numbers: read a sweep (``sweep.json``, each run's ``run.json`` and ``metrics.json``), take each
run's value by its protocol (best validation epoch or last value), and aggregate per (task, method, metric) over
the seeds (median/mean, std, n, the paper's number, Welch and TOST against the reference). No output here: the
entries are plain data that ``kasa_lightning.experiments.report._output`` turns into markdown and plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kasa_lightning.experiments.paper.results import lookup
from kasa_lightning.experiments.stats import compare_means, summarize
from kasa_lightning.experiments.sweep import (
    ABLATION,
    MANIFEST,
    Run,
    SweepError,
    read_json,
    run_state,
    unreadable_json,
)

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
        damaged = unreadable_json(run_dir / "metrics.json")
        if damaged is not None:  # not "interrupted or still running": say what is wrong and the way out
            entry["state"] = "failed"
            entry["error"] = (
                f"{run_dir / 'metrics.json'} is unreadable ({damaged}): the file is damaged. Move it away and rerun "
                "the sweep command, which runs this run again from its checkpoints/last.ckpt, or delete the run's "
                "folder to train it anew"
            )
        elif not state.get("trained", state["complete"]):  # lm-eval (--eval_tasks) is reported apart, below
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
        if spec.get("harness"):
            from kasa_lightning.harness import harness_runs

            runs.extend(harness_runs(entry, read_json(run_dir / "metrics.json") or {}, state))
    return runs, problems


# ---------------------------------------------------------------------------------------------------- aggregation
def ordered(values: Sequence[str]) -> list[str]:
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
        paper_method = ABLATION_PAPER.get(method)
        if paper_method is None:
            return None
        method = paper_method
    return lookup(run.get("model") or "", run.get("paper_task"), method, key)


def aggregate(
    runs: list[dict[str, Any]], reference: str = "kasa", margin: float = 0.02, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """The report's entries, one per (task, method, metric), in the sweep's order."""
    entries: list[dict[str, Any]] = []
    for task in ordered([r["task"] for r in runs]):
        in_task = [r for r in runs if r["task"] == task]
        methods = ordered([r["method"] for r in in_task])
        if in_task[0].get("ablation"):
            methods = [m for m in ABLATION if m in methods] + [m for m in methods if m not in ABLATION]
        metrics = ordered([m for r in in_task for m in r["metrics"]])
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
