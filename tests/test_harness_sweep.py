"""lm-eval in ``sweep --eval_tasks`` and ``report``: a planned run's real ``eval`` step on ``last.ckpt`` (resumable, its
failure recorded like the other steps), and the report's ``harness`` family (tasks x methods x seeds, the paper's
commonsense number beside ours with the note on the protocols) from a sweep written by hand."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from harness_support import (  # noqa: E402
    accuracy,
    build,
    commonsense_config,
    load_tokenizer,
    loglikelihoods,
    train_briefly,
)

from kasa_lightning.experiments import report, sweep  # noqa: E402


@pytest.mark.slow  # two eval processes (one fails at once)
def test_sweep_runs_eval_after_fit_resumably_and_records_failures(tmp_path: Path, capsys) -> None:
    setup = build(tmp_path / "tiny")
    ckpt = tmp_path / "trained.ckpt"
    train_briefly(setup["model"], setup["docs"], ckpt, num_labels=0)  # a causal DataModule links num_labels=0
    out = tmp_path / "sweep"
    args = ["--config", str(commonsense_config(tmp_path, setup["model"])), "--seeds", "0-1", "--output_dir", str(out)]
    args += ["--eval_tasks", "tiny_colors", "--eval_include_path", str(setup["tasks"]), "--eval_limit", "4"]
    assert sweep.main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "eval --config" in printed and "--tasks tiny_colors" in printed and "--limit 4" in printed
    runs = [
        sweep.Run(
            **{
                k: v
                for k, v in json.loads((out / "tiny" / "kasa" / f"seed{s}" / "run.json").read_text()).items()
                if k != "format"
            }
        )
        for s in (0, 1)
    ]
    assert runs[0].harness["tasks"] == ["tiny_colors"] and runs[0].test
    for run in runs:  # fit and test done (as a finished run leaves them); seed1 lost its checkpoint
        run_dir = run.directory(out)
        (run_dir / "checkpoints").mkdir()
        if run.seed == 0:
            shutil.copy(ckpt, run_dir / "checkpoints" / "last.ckpt")
        fit = {"finished": True, "epochs": [], "global_step": 30}
        (run_dir / "metrics.json").write_text(
            json.dumps({"format": 1, "fit": fit, "test": {"metrics": {"test/accuracy_boolq": 0.5}}})
        )
    status = sweep.execute(runs[0], out)
    assert status["status"] == "done", (status["error"], Path(status["log"]).read_text()[-3000:])
    run_dir = runs[0].directory(out)
    scored = json.loads((run_dir / "eval.json").read_text())
    from kasa_lightning import KaSAModule

    module = KaSAModule.load_from_checkpoint(str(run_dir / "checkpoints" / "last.ckpt")).eval()
    docs = setup["docs"][:4]
    expected = accuracy(loglikelihoods(module.model, load_tokenizer(setup["model"]), docs), docs)
    assert scored["results"]["tiny_colors"]["acc,none"] == pytest.approx(expected) and scored["limit"] == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval"]["requested"] == ["tiny_colors"] and "test" in metrics  # the test part kept
    assert sweep.run_state(runs[0], run_dir)["complete"]
    assert sweep.execute(runs[0], out).get("skipped")  # resumable: done is done
    failed = sweep.execute(runs[1], out)
    assert failed["status"] == "failed" and failed["step"] == "eval" and "--ckpt_path" in failed["error"]
    entries = report.report(out)
    harness = [e for e in entries if e["family"] == "harness"]
    assert [e["metric"] for e in harness] == ["eval/tiny_colors/acc,none"]
    assert harness[0]["values"] == [pytest.approx(expected)] and harness[0]["failed"][0]["seed"] == 1
    main = [e for e in entries if e["metric"] == "test/accuracy_boolq"][0]
    assert main["n"] == 2  # the eval failure does not hide the run's fit/test results


def _hand_run(
    out: Path, method: str, seed: int, family: str, model: str, scores: dict | None, status: dict | None
) -> str:
    run = sweep.Run(
        task="cs",
        method=method,
        seed=seed,
        config="cs.yaml",
        overlays=[],
        family=family,
        model=model,
        paper_task="commonsense" if family == "commonsense" else None,
        metrics=["test/accuracy_boolq"],
        select="last",
        aggregate="mean",
        test=True,
        harness={
            "tasks": ["arc_easy", "my_task"],
            "include_path": None,
            "limit": None,
            "num_fewshot": None,
            "batch_size": 1,
        },
    )
    d = run.directory(out)
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(sweep.asdict(run)))
    metrics = {
        "format": 1,
        "fit": {"finished": True, "epochs": [], "global_step": 3},
        "test": {"metrics": {"test/accuracy_boolq": 0.6}},
    }
    if scores is not None:
        tasks = {t: {"metrics": m, "version": 1.0, "n_shot": 0, "limit": None} for t, m in scores.items()}
        metrics["eval"] = {"tasks": tasks, "requested": ["arc_easy", "my_task"]}
    (d / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (d / "status.json").write_text(json.dumps(status))
    return run.rel_dir


def _scores(acc: float) -> dict:
    return {
        "arc_easy": {"acc,none": acc, "acc_stderr,none": 0.01, "acc_norm,none": acc + 0.01},
        "my_task": {"exact_match,none": acc / 2},
    }


@pytest.mark.parametrize("family", ["commonsense", "glue"])
def test_report_has_a_harness_family_with_the_paper_beside_it(tmp_path: Path, family: str) -> None:
    from kasa_lightning.experiments.paper.results import lookup
    from kasa_lightning.harness import HARNESS_NOTE

    out = tmp_path / "sweep"
    model = "meta-llama/Meta-Llama-3-8B"
    rels = [_hand_run(out, "kasa", s, family, model, _scores(a), None) for s, a in ((0, 0.70), (1, 0.74))]
    rels += [_hand_run(out, "lora", 0, family, model, _scores(0.66), None)]
    failure = {"status": "failed", "step": "eval", "error": "TaskDataUnavailableError: no network"}
    rels += [_hand_run(out, "lora", 1, family, model, None, failure)]
    (out / "sweep.json").write_text(json.dumps({"kind": "kasa_lightning.sweep", "format": 1, "runs": rels}))
    entries = report.report(out)
    harness = [e for e in entries if e["family"] == "harness"]
    assert {e["task"] for e in harness} == {"cs / lm-eval"}
    kasa = {e["metric"]: e for e in harness if e["method"] == "kasa"}
    assert list(kasa) == ["eval/arc_easy/acc,none", "eval/arc_easy/acc_norm,none", "eval/my_task/exact_match,none"]
    acc = kasa["eval/arc_easy/acc,none"]
    assert acc["values"] == [0.70, 0.74] and acc["mean"] == pytest.approx(statistics.mean([0.70, 0.74]))
    assert acc["std"] == pytest.approx(statistics.stdev([0.70, 0.74])) and acc["aggregate"] == "mean"
    paper = lookup(model, "commonsense", "kasa", "accuracy_ARC-Easy")
    assert acc["paper"] == (pytest.approx(paper.logged_value) if family == "commonsense" else None)
    assert kasa["eval/my_task/exact_match,none"]["paper"] is None  # not a benchmark of the paper
    lora = [e for e in harness if e["method"] == "lora" and e["metric"] == "eval/arc_easy/acc,none"][0]
    assert lora["values"] == [0.66] and lora["failed"] == [{"seed": 1, "error": failure["error"]}]
    assert lora["vs_reference"]["reference"] == "kasa"
    main = [e for e in entries if e["method"] == "lora" and e["metric"] == "test/accuracy_boolq"][0]
    assert main["n"] == 2 and not main["failed"]  # fit and test of seed 1 are complete; only its eval failed
    md = (out / "results.md").read_text()
    assert "## cs / lm-eval" in md and HARNESS_NOTE in md
