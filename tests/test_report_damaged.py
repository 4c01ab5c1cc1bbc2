"""Damaged files of a sweep run are named with the way out: ``report`` over a damaged ``metrics.json`` (old code:
"incomplete (status done: interrupted or still running)"), and the sweep over a truncated ``last.ckpt``."""

from __future__ import annotations

import json

from kasa_lightning.experiments import report, sweep


def test_a_damaged_metrics_file_is_named_as_unreadable(tmp_path):
    out = tmp_path / "sweep"
    runs = []
    for seed in (0, 1):
        run = sweep.Run(
            task="t",
            method="kasa",
            seed=seed,
            config="t.yaml",
            overlays=[],
            family="glue",
            model="roberta-base",
            paper_task="rte",
            metrics=["val/accuracy"],
            paper_metrics={"val/accuracy": "accuracy"},
        )
        d = run.directory(out)
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps(sweep.asdict(run)))
        text = json.dumps(
            {
                "format": 1,
                "fit": {
                    "finished": True,
                    "global_step": 4,
                    "epochs": [{"epoch": 0, "step": 4, "metrics": {"val/accuracy": 0.7}}],
                },
            }
        )
        (d / "metrics.json").write_text(text if seed == 0 else text[: len(text) // 2])  # seed 1: cut short
        (d / "status.json").write_text(json.dumps({"status": "done"}))
        runs.append(run.rel_dir)
    (out / "sweep.json").write_text(json.dumps({"kind": "kasa_lightning.sweep", "format": 1, "runs": runs}))
    (entry,) = report.report(out)
    assert entry["values"] == [0.7] and entry["n"] == 1
    ((failed),) = entry["failed"]
    assert failed["seed"] == 1
    damaged = str(out / runs[1] / "metrics.json")
    assert f"{damaged} is unreadable (JSONDecodeError" in failed["error"], failed
    assert "rerun the sweep command" in failed["error"] and "still running" not in failed["error"]
    assert f"{damaged} is unreadable" in (out / "results.md").read_text()


def test_a_truncated_last_ckpt_in_a_sweep_names_the_checkpoints_to_restart_from(tmp_path):
    """Old code: the sweep resumed from the truncated last.ckpt and failed the same way on every rerun."""
    import torch

    from kasa_lightning.experiments.sweep import execute

    run = sweep.Run(
        task="t",
        method="kasa",
        seed=0,
        config="t.yaml",
        overlays=[],
        family="glue",
        model="roberta-base",
        paper_task="rte",
        metrics=["val/accuracy"],
        paper_metrics={"val/accuracy": "accuracy"},
    )
    ckpts = run.directory(tmp_path) / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"global_step": 4, "state_dict": {"w": torch.zeros(3)}}, ckpts / "best-epoch=0-step=4.ckpt")
    torch.save({"global_step": 8, "state_dict": {"w": torch.zeros(3)}}, ckpts / "last.ckpt")
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # a copy cut short
    status = execute(run, tmp_path)
    assert status["status"] == "failed"
    error = status["error"]
    assert f"{ckpts / 'last.ckpt'} is damaged" in error and "best-epoch=0-step=4.ckpt" in error, error
    assert f"cp {ckpts / 'best-epoch=0-step=4.ckpt'} {ckpts / 'last.ckpt'}" in error
    assert json.loads((run.directory(tmp_path) / "status.json").read_text())["error"] == error
