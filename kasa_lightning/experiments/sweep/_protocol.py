"""The paper's protocol per task family: from a resolved config, the family (GLUE, E2E, commonsense, instruction,
the demo, your own texts with ``TextClassificationDataModule``, a custom DataModule), the metrics to report, the
value taken per run (best/last) and over seeds (median/mean), whether to validate/test ``last.ckpt``, and the
paper's keys. One table of decisions, kept apart from the planning that calls it
(``kasa_lightning.experiments.sweep._plan``) and the report that reads its output.
"""

from __future__ import annotations

from typing import Any

from kasa_lightning.experiments.sweep._spec import SweepError


def family(config: dict[str, Any], where: str, metric: str | None, test: str) -> dict[str, Any]:
    """The task family, the metrics to report, the paper's protocol and the paper's key, from a resolved config
    (``metric``: ``--metric``, first among the metrics; required for a DataModule not named here)."""
    data = config.get("data") or {}
    cls = str(data.get("class_path", "")).rsplit(".", 1)[-1]
    init = data.get("init_args") or {}
    trainer = config.get("trainer") or {}
    max_steps = trainer.get("max_steps")
    info: dict[str, Any] = {"validate_last": max_steps is not None and int(max_steps) > 0}
    if cls == "GLUEDataModule":
        from kasa_lightning.datamodules.glue import TASKS

        task = init.get("task")
        if task not in TASKS:
            raise SweepError(f"{where}: data.init_args.task={task!r} is not a GLUE task; choose from {sorted(TASKS)}")
        spec = TASKS[task]
        suffixes = [f"_{n}" for n in spec.val_names] if spec.val_names and not init.get("val_from_train") else [""]
        metrics = [f"val/{m}{s}" for m in spec.metrics for s in suffixes]
        info.update(
            family="glue",
            paper_task=task,
            metrics=metrics,
            select="best",
            aggregate="median",
            test=False,
            paper_metrics={f"val/{spec.metrics[0]}": spec.metrics[0]} if len(suffixes) == 1 else {},
        )
    elif cls == "E2EDataModule":
        _require(
            init, "test_path", where, "the E2E config has no test set", " (the paper scores it after the last epoch)"
        )
        names = list(init.get("metrics") or ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"))
        info.update(_test_after_last_epoch("e2e", "e2e", names))
    elif cls == "CommonsenseDataModule":
        _require(init, "test_dir", where, "the commonsense config has no test sets", " (LLM-Adapters' dataset/ folder)")
        from kasa_lightning.metrics.commonsense import COMMONSENSE_DATASETS

        sets = list(init.get("test_sets") or COMMONSENSE_DATASETS)
        names = [f"accuracy_{s}" for s in sets] + (["accuracy_average"] if len(sets) > 1 else [])
        info.update(_test_after_last_epoch("commonsense", "commonsense", names))
    elif cls == "InstructionDataModule":
        _require(init, "test_path", where, "the instruction config has no test prompts")
        split = init.get("test_split")
        paper_tasks: dict[Any, str] = {
            "test_summarize": "summarization",
            "test_classify": "classification",
            "test_coding": "coding",
            "test_closed_qa": "closed_qa",
        }
        paper_task = paper_tasks.get(split) or ("mt_bench" if init.get("source") == "alpaca" else None)
        # the paper's number is an LLM judge's score (kasa_lightning.metrics.judge); the run logs ROUGE-L
        info.update(_test_after_last_epoch("instruct", paper_task, ["rougeL"], paper_metrics=False))
    elif cls == "SentimentDemoDataModule":
        info.update(
            family="demo",
            paper_task=None,
            metrics=["val/accuracy"],
            select="best",
            aggregate="median",
            test=False,
            paper_metrics={},
        )
    elif cls == "TextClassificationDataModule":  # your own labelled texts: the metrics it logs on validation
        regression = init.get("num_labels") == 1
        names = list(init.get("metrics") or (["pearson", "spearman"] if regression else ["accuracy"]))
        info.update(
            family="custom",
            paper_task=None,
            metrics=[f"val/{n}" for n in names],
            select="best",
            aggregate="median",
            test=False,
            paper_metrics={},
        )
    elif metric is None:
        raise SweepError(
            f"{where}: no metric to report: the report does not know data class {cls or '(none)'!r}; "
            "name the metric with --metric (e.g. --metric val/accuracy or --metric test/accuracy)"
        )
    else:
        info.update(
            family="custom",
            paper_task=None,
            metrics=[],
            select="best",
            aggregate="median",
            test=metric.startswith("test/"),
            paper_metrics={},
        )
    if metric is not None:
        if not metric.startswith(("val/", "test/")):
            raise SweepError(f"--metric {metric}: name a logged validation or test metric, e.g. val/accuracy")
        info["metrics"] = [metric] + [m for m in info["metrics"] if m != metric]
        if metric.startswith("test/"):
            info.update(test=True, select="last", aggregate="mean")
    if test == "yes":
        info["test"] = True
    elif test == "no":
        if not any(m.startswith("val/") for m in info["metrics"]):
            raise SweepError(f"{where}: --test no leaves no metric to report (its metrics are {info['metrics']})")
        info["test"] = False
        info["metrics"] = [m for m in info["metrics"] if m.startswith("val/")]
    return info


def _test_after_last_epoch(
    family: str, paper_task: str | None, names: list[str], paper_metrics: bool = True
) -> dict[str, Any]:
    """A task family scored on its test set after the last epoch, averaged over seeds (E2E, commonsense,
    instruction following); ``paper_metrics``: the paper reports these metrics under the same names."""
    return {
        "family": family,
        "paper_task": paper_task,
        "metrics": [f"test/{n}" for n in names],
        "select": "last",
        "aggregate": "mean",
        "test": True,
        "paper_metrics": {f"test/{n}": n for n in names} if paper_metrics else {},
    }


def _require(init: dict[str, Any], key: str, where: str, what: str, hint: str = "") -> None:
    """Refuse a config whose DataModule lacks the data that its task family is scored on."""
    if init.get(key) is None:
        raise SweepError(f"{where}: no metric to report: {what}; set data.init_args.{key}{hint}")
