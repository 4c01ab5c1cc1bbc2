"""lm-eval scores in ``python -m kasa_lightning report``: each sweep task scored with ``--eval_tasks`` gets a family
of its own, ``harness`` (its rows: the lm-eval tasks x methods, over seeds, with the report's usual statistics), as
the entries of a pseudo-task ``<task> / lm-eval``. Where the paper reports the same benchmark (its commonsense
table: BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA), the paper's number is put beside ours for runs
fine-tuned on Commonsense170K as in the paper, with a note that the protocols differ.
"""

from __future__ import annotations

from typing import Any

#: lm-eval task name -> the paper's commonsense set (its metric ``accuracy_<set>`` in ``paper_results.json``)
PAPER_SETS = {
    "boolq": "boolq",
    "piqa": "piqa",
    "social_iqa": "social_i_qa",
    "siqa": "social_i_qa",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "arc_easy": "ARC-Easy",
    "arc_challenge": "ARC-Challenge",
    "openbookqa": "openbookqa",
}

#: printed under a ``harness`` table of ``results.md``
NOTE = (
    "lm-evaluation-harness scores (`python -m kasa_lightning eval`): log-likelihood ranking of the answer choices "
    "(`acc`; `acc_norm` divides by the answer's length in bytes), mean over seeds of last.ckpt. The `paper` column "
    "(for runs fine-tuned on Commonsense170K, as in the paper) is the paper's protocol: generation with answer "
    "extraction on LLM-Adapters' prompts. The protocols differ, so the two numbers are not expected to be equal."
)


def _metric_order(name: str) -> tuple[int, str]:
    base = name.split(",")[0]
    return ({"acc": 0, "acc_norm": 1, "exact_match": 2}.get(base, 3), name)


def harness_runs(run: dict[str, Any], metrics_file: dict[str, Any], state: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's runs for the lm-eval scores of one sweep run (``run``: its ``run.json`` plus ``run``, the
    relative directory; ``state``: ``kasa_lightning.experiments.sweep._exec.run_state``): none without
    ``--eval_tasks``."""
    settings = run.get("harness")
    if not settings:
        return []
    scored = ((metrics_file.get("eval") or {}).get("tasks")) or {}
    metrics: list[str] = []
    values: dict[str, float] = {}
    for task, entry in scored.items():
        for name, value in sorted((entry.get("metrics") or {}).items(), key=lambda kv: _metric_order(kv[0])):
            if "_stderr" in name:
                continue
            key = f"eval/{task}/{name}"
            metrics.append(key)
            if isinstance(value, (int, float)):
                values[key] = float(value)
    commonsense = run.get("family") == "commonsense"
    paper_metrics = {
        m: f"accuracy_{PAPER_SETS[m.split('/')[1]]}"
        for m in metrics
        if commonsense and m.split("/")[1] in PAPER_SETS and m.endswith("/acc,none")
    }
    status = state.get("status")
    if state.get("evaluated") and state.get("trained"):
        outcome, error = "complete", None
    elif status == "failed":
        outcome, error = "failed", state.get("error")
    else:
        outcome, error = "missing", "not scored yet" if state.get("trained") else "the run has not finished"
    return [
        {
            **run,
            "task": f"{run['task']} / lm-eval",
            "family": "harness",
            "metrics": metrics,
            "values": values if outcome == "complete" else {},
            "select": "last",
            "aggregate": "mean",
            "paper_task": "commonsense" if paper_metrics else None,
            "paper_metrics": paper_metrics,
            "ablation": False,
            "state": outcome,
            "error": error,
        }
    ]
