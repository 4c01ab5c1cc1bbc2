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
| lm-eval (``--eval_tasks``) | ``eval`` of ``last.ckpt`` (``eval/<task>/acc,none``) | mean | Table 3's sets (a note) |

Every entry also has the mean, the sample standard deviation, n, the per-seed values and, for each method against
``--reference`` (default ``kasa``), Welch's t-test and a TOST equivalence test within ``--margin`` (in the
metric's unit; default 0.02, i.e. 2 points of an accuracy), from ``experiments.stats``. Runs that are missing
(not started, interrupted, no value) or failed are listed per entry and in ``results.md``; they are never
averaged over. Ablation steps 1 (LoRA) and 5 (KaSA) are compared with the paper's LoRA and KaSA numbers of the
task (the same setting); steps 2-4 have no number in the paper.

Writes into the sweep directory: ``results.json`` (a list of entries: ``task``, ``method``, ``metric``,
``median``, ``mean``, ``std``, ``n``, ``paper`` (in the logged unit, null where the paper has none), and
``model``, ``family``, ``select``, ``aggregate``, ``seeds``, ``values``, ``paper_printed``, ``missing``,
``failed``, ``vs_reference``), ``results.md``, and per task ``plots/<task>.png`` (one bar per method: the headline
number of the task's first metric; the seeds as points; the paper's value as a red diamond) with the plotted
numbers in ``plots/<task>.json``.

The reading and aggregation are the internal ``_aggregate``, the markdown and plots ``_output``; their public
names are re-exported here, the entry package ``kasa_lightning.cli`` calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kasa_lightning.experiments.report._aggregate import (
    ABLATION_PAPER,
    aggregate,
    collect,
    headline,
    load_sweep,
    ordered,
    run_value,
)
from kasa_lightning.experiments.report._output import markdown, plot_task
from kasa_lightning.experiments.sweep import MANIFEST, SweepError

__all__ = [
    "ABLATION_PAPER",
    "aggregate",
    "collect",
    "headline",
    "load_sweep",
    "main",
    "markdown",
    "plot_task",
    "report",
    "run_value",
]


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
    for task in ordered([e["task"] for e in entries]):
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
