"""``python -m kasa_lightning sweep`` and ``report``: a real sweep (tiny BERT, 2 seeds x 2 methods) printed with
``--dry-run``, one printed command run by itself, the sweep killed mid-run (SIGKILL to its process group) and
resumed, then the report checked against an aggregation computed here from the runs' ``metrics.json`` files; and
the bad inputs, each an error that names its setting.

Over 400 lines because the end-to-end sweep test and the bad-input tests share one sweep fixture and its helpers.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lightning_helpers import MINILM, TINY_BERT

from kasa_lightning.experiments import report, sweep

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }


def _tiny_config(path: Path) -> Path:
    """A KaSA run on the generated sentiment task with a 2-layer BERT built from its config: 4 steps per epoch."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": EPOCHS,
            "logger": False,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/accuracy", "mode": "max", "save_last": True},
                }
            ],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {
                "backbone": MINILM,
                "backbone_config": TINY_BERT,
                "adapter": {
                    "method": "kasa",
                    "r": 4,
                    "alpha": 8,
                    "target_modules": ["query", "value"],
                    "modules_to_save": ["classifier"],
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
            },
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 32, "val_size": 32, "batch_size": 8, "max_length": 32},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _sweep_args(config: Path, out: Path) -> list[str]:
    return [
        "--config",
        str(config),
        "--seeds",
        "0-1",
        "--methods",
        "kasa,lora",
        "--output_dir",
        str(out),
        "--trainer.enable_checkpointing",
        "true",
    ]  # an override that passes through to every run


def _independent_table(out: Path) -> dict[str, list[float]]:
    """method -> per-seed best validation accuracy, read straight from each run's metrics.json."""
    table: dict[str, list[float]] = {}
    for method in ("kasa", "lora"):
        for seed in (0, 1):
            metrics = json.loads((out / "tiny" / method / f"seed{seed}" / "metrics.json").read_text())
            table.setdefault(method, []).append(max(e["metrics"]["val/accuracy"] for e in metrics["fit"]["epochs"]))
    return table


@pytest.mark.slow
def test_sweep_dry_run_kill_resume_and_report(tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "sweep"
    # --dry-run: one runnable shell command per run, configs written, nothing run
    assert sweep.main([*_sweep_args(config, out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"cd {shlex.quote(os.getcwd())} && ") for line in lines)
    assert [shlex.split(line)[shlex.split(line).index("--config") + 1] for line in lines] == [
        str((out / f"tiny/{m}/seed{s}/resolved.yaml").resolve()) for m in ("kasa", "lora") for s in (0, 1)
    ]
    assert not list(out.rglob("metrics.json"))
    resolved = yaml.safe_load((out / "tiny/lora/seed1/resolved.yaml").read_text())
    assert resolved["seed_everything"] == 1 and resolved["model"]["init_args"]["adapter"]["method"] == "lora"
    assert resolved["trainer"]["enable_checkpointing"] is True
    # a scheduler runs one printed command: it trains the run where the sweep expects it
    done = subprocess.run(
        ["bash", "-c", lines[0]], check=False, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads((out / "tiny/kasa/seed0/metrics.json").read_text())
    assert first["fit"]["finished"] and len(first["fit"]["epochs"]) == EPOCHS

    # the sweep itself, killed while kasa/seed1 trains (after its first checkpoint)
    cmd = [sys.executable, "-m", "kasa_lightning", "sweep", *_sweep_args(config, out)]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    last = out / "tiny/kasa/seed1/checkpoints/last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stdout.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training process
    proc.wait(timeout=30)
    assert last.is_file(), proc.stdout.read()[-3000:]
    killed = json.loads((out / "tiny/kasa/seed1/metrics.json").read_text())["fit"]
    assert not killed["finished"] and 1 <= len(killed["epochs"]) < EPOCHS  # really stopped mid-run
    assert json.loads((out / "tiny/kasa/seed1/status.json").read_text())["status"] == "running"
    assert not (out / "tiny/lora/seed0/metrics.json").exists()

    # resumed: the finished runs are skipped, kasa/seed1 continues from last.ckpt, the rest run
    resumed = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=480)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "tiny/kasa/seed0: done earlier, skipped" in resumed.stdout
    fit_log = (out / "tiny/kasa/seed1/fit.log").read_text()
    assert fit_log.count("\n$ ") == 2 and f"--ckpt_path {last.resolve()}" in fit_log
    history = json.loads((out / "tiny/kasa/seed1/metrics.json").read_text())["fit"]
    assert history["finished"] and [e["epoch"] for e in history["epochs"]] == list(range(EPOCHS))
    assert history["epochs"][: len(killed["epochs"])] == killed["epochs"]  # the pre-kill epochs kept via the ckpt
    for method in ("kasa", "lora"):
        for seed in (0, 1):
            assert json.loads((out / f"tiny/{method}/seed{seed}/status.json").read_text())["status"] == "done"

    # the report against an aggregation computed here from the metric files
    assert report.main([str(out), "--margin", "0.05"]) == 0
    entries = json.loads((out / "results.json").read_text())
    expected = _independent_table(out)
    assert [(e["task"], e["method"], e["metric"]) for e in entries] == [
        ("tiny", "kasa", "val/accuracy"),
        ("tiny", "lora", "val/accuracy"),
    ]
    for e in entries:
        values = expected[e["method"]]
        assert e["values"] == pytest.approx(values) and e["n"] == 2 and e["paper"] is None
        assert e["median"] == pytest.approx(statistics.median(values))
        assert e["mean"] == pytest.approx(statistics.mean(values))
        assert e["std"] == pytest.approx(statistics.stdev(values))
        assert e["missing"] == [] and e["failed"] == []
    assert entries[0]["vs_reference"] is None and entries[1]["vs_reference"]["reference"] == "kasa"
    assert entries[1]["vs_reference"]["difference"] == pytest.approx(
        statistics.mean(expected["lora"]) - statistics.mean(expected["kasa"])
    )
    md = (out / "results.md").read_text()
    assert "| lora | val/accuracy |" in md and "plots/tiny.png" in md
    # the plot: a PNG that opens, with one bar per method at the median and the seeds as points
    import matplotlib.image

    image = matplotlib.image.imread(out / "plots" / "tiny.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    plotted = json.loads((out / "plots" / "tiny.json").read_text())
    assert plotted["methods"] == ["kasa", "lora"]
    assert plotted["bars"] == pytest.approx([statistics.median(expected["kasa"]), statistics.median(expected["lora"])])
    assert plotted["points"] == {m: pytest.approx(v) for m, v in expected.items()}


def test_report_lists_failed_and_missing_runs_without_averaging_them(tmp_path):
    """A sweep directory written by hand: seed0 complete, seed1 failed, seed2 never ran."""
    out = tmp_path / "sweep"
    runs = []
    for seed, state in ((0, "done"), (1, "failed"), (2, None)):
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
        if state == "done":
            epochs = [
                {"epoch": i, "step": 4 * (i + 1), "metrics": {"val/accuracy": v}} for i, v in enumerate((0.6, 0.8, 0.7))
            ]
            (d / "metrics.json").write_text(
                json.dumps({"format": 1, "fit": {"finished": True, "epochs": epochs, "global_step": 12}})
            )
            (d / "status.json").write_text(json.dumps({"status": "done"}))
        elif state == "failed":
            (d / "status.json").write_text(
                json.dumps({"status": "failed", "step": "fit", "error": "RuntimeError: out of memory"})
            )
        runs.append(run.rel_dir)
    (out / "sweep.json").write_text(json.dumps({"kind": "kasa_lightning.sweep", "format": 1, "runs": runs}))
    (entry,) = report.report(out)
    assert entry["values"] == [0.8] and entry["n"] == 1 and entry["median"] == 0.8  # best epoch of seed 0 only
    assert entry["paper"] == pytest.approx(0.816)  # RoBERTa-base KaSA RTE, 81.6 in Table 1
    assert entry["failed"] == [{"seed": 1, "error": "RuntimeError: out of memory"}]
    assert [m["seed"] for m in entry["missing"]] == [2]
    md = (out / "results.md").read_text()
    assert "- failed: kasa seed 1: RuntimeError: out of memory" in md and "- missing: kasa seed 2" in md


def _fake_run(out: Path, method: str, seed: int, best: float, ablation: bool = False) -> str:
    """A finished GLUE RTE run (RoBERTa-base) written by hand: three epochs whose best is ``best``."""
    run = sweep.Run(
        task="rte",
        method=method,
        seed=seed,
        config="rte.yaml",
        overlays=[],
        family="glue",
        model="roberta-base",
        paper_task="rte",
        metrics=["val/accuracy"],
        paper_metrics={"val/accuracy": "accuracy"},
        ablation=ablation,
    )
    d = run.directory(out)
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(sweep.asdict(run)))
    epochs = [{"epoch": i, "step": i + 1, "metrics": {"val/accuracy": v}} for i, v in enumerate((best - 0.1, best))]
    (d / "metrics.json").write_text(
        json.dumps({"format": 1, "fit": {"finished": True, "epochs": epochs, "global_step": 2}})
    )
    return run.rel_dir


def test_ablation_report_keeps_the_step_order_and_the_paper_values(tmp_path):
    out = tmp_path / "ablation"
    rels = [
        _fake_run(out, step, seed, 0.70 + 0.01 * i + 0.002 * seed, ablation=True)
        for i, step in reversed(list(enumerate(sweep.ABLATION)))
        for seed in (0, 1)
    ]
    (out / "sweep.json").write_text(json.dumps({"kind": "kasa_lightning.sweep", "format": 1, "runs": rels}))
    entries = report.report(out)  # the reference becomes the ablation's full KaSA, 5-kasa
    assert [e["method"] for e in entries] == list(sweep.ABLATION)
    paper = {e["method"]: e["paper"] for e in entries}
    assert paper == {
        "1-lora": pytest.approx(0.784),
        "2-svd-truncation": None,
        "3-singular-values": None,
        "4-l2": None,
        "5-kasa": pytest.approx(0.816),
    }  # Table 1, RoBERTa-base RTE: LoRA, KaSA
    assert entries[-1]["vs_reference"] is None
    assert entries[0]["vs_reference"]["reference"] == "5-kasa"
    assert entries[0]["vs_reference"]["difference"] == pytest.approx(-0.04)
    plotted = json.loads((out / "plots" / "rte.json").read_text())
    assert plotted["methods"] == list(sweep.ABLATION)
    assert plotted["bars"] == pytest.approx([0.701 + 0.01 * i for i in range(5)])  # medians of the two seeds


def test_a_started_run_keeps_its_config(tmp_path):
    """Rerunning a sweep into the same directory with other settings must not mix the results."""
    out = tmp_path / "sweep"
    run = sweep.Run(
        task="t",
        method="kasa",
        seed=0,
        config="t.yaml",
        overlays=[],
        family="demo",
        model="m",
        paper_task=None,
        metrics=["val/accuracy"],
    )
    config = {"seed_everything": 0, "trainer": {"max_epochs": 3}}
    sweep.write_plan([(run, config)], out, ["--config", "t.yaml"])
    sweep.write_plan([(run, {**config, "trainer": {"max_epochs": 4}})], out, ["--config", "t.yaml"])  # not started
    (run.directory(out) / "status.json").write_text(json.dumps({"status": "running"}))
    sweep.write_plan([(run, {**config, "trainer": {"max_epochs": 4}})], out, ["--dry-run"])  # the same config
    with pytest.raises(sweep.SweepError, match="t/kasa/seed0 was started with another config"):
        sweep.write_plan([(run, config)], out, ["--config", "t.yaml"])
    assert yaml.safe_load((run.directory(out) / "resolved.yaml").read_text())["trainer"]["max_epochs"] == 4


@pytest.mark.parametrize(
    "seeds, message",
    [
        ("4-0", "--seeds 4-0: the range 4-0 goes down"),
        ("0,x", "--seeds 0,x: 'x' is not a seed"),
        ("1,1", "names a seed twice"),
    ],
)
def test_bad_seeds(seeds, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.parse_seeds(seeds)
    assert sweep.parse_seeds("0-2,7") == [0, 1, 2, 7] and sweep.parse_seeds("0,2,5") == [0, 2, 5]


def test_bad_methods_and_directories(tmp_path, capsys):
    code = sweep.main(["--config", "x.yaml", "--methods", "kasa,dora", "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "--methods: unknown method(s) ['dora']" in capsys.readouterr().err
    code = sweep.main(["--config", "x.yaml", "--seeds", "4-0", "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "--seeds 4-0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--config", "x.yaml", "--output_dir", str(tmp_path / "o"), "--optimizer.lr", "1"])
    assert "--optimizer.lr" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    assert "is not a sweep directory: no sweep.json (it is empty)" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    assert report.main([str(foreign)]) == 2
    assert "no sweep.json (it holds ['notes.txt'])" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_the_paper_configs_plan_with_their_protocol_and_paper_values(tmp_path):
    """One config per family (and MNLI's two validation sets): the sweep plans it with the paper's protocol, and
    every metric the paper reports for it has the paper's value."""
    from kasa_lightning.experiments.paper.results import lookup

    configs = [
        "glue/roberta-base/mnli.yaml",
        "glue/deberta-v3-base/stsb.yaml",
        "e2e/gpt2-large.yaml",
        "commonsense/llama3-8b.yaml",
        "instruct/mistral-7b/coding.yaml",
        "instruct/gemma-7b/alpaca.yaml",
    ]
    runs = {
        r.task: r for r, _ in sweep.plan([str(ROOT / "configs" / c) for c in configs], [0], ["lora"], tmp_path, [], [])
    }
    mnli, stsb = runs["glue-roberta-base-mnli"], runs["glue-deberta-v3-base-stsb"]
    assert mnli.metrics == ["val/accuracy_matched", "val/accuracy_mismatched"] and mnli.paper_metrics == {}
    assert (stsb.family, stsb.select, stsb.aggregate, stsb.test) == ("glue", "best", "median", False)
    assert stsb.metrics == ["val/pearson", "val/spearman"] and stsb.paper_metrics == {"val/pearson": "pearson"}
    e2e = runs["e2e-gpt2-large"]
    assert (e2e.family, e2e.select, e2e.aggregate, e2e.test) == ("e2e", "last", "mean", True)
    assert e2e.metrics[0] == "test/BLEU"
    sense = runs["commonsense-llama3-8b"]
    assert sense.test and "test/accuracy_ARC-Challenge" in sense.metrics
    assert sense.metrics[-1] == "test/accuracy_average"
    assert runs["instruct-mistral-7b-coding"].paper_task == "coding"
    assert runs["instruct-gemma-7b-alpaca"].paper_task == "mt_bench"
    for run in (stsb, e2e, sense):
        for metric, key in run.paper_metrics.items():
            assert lookup(run.model, run.paper_task, "lora", key) is not None, (run.task, metric)
    for run in runs.values():
        assert run.commands(tmp_path)[-1][3] == ("test" if run.test else "fit")


def test_config_without_a_metric_to_report(tmp_path, capsys):
    """A DataModule the report does not know, and an E2E config whose test set is switched off."""
    custom = tmp_path / "custom.yaml"
    cfg = yaml.safe_load(_tiny_config(tmp_path / "base.yaml").read_text())
    cfg["data"]["class_path"] = "kasa_lightning.datamodules.base.BaseDataModule"
    cfg["data"]["init_args"] = {}
    custom.write_text(yaml.safe_dump(cfg))
    code = sweep.main(["--config", str(custom), "--output_dir", str(tmp_path / "o"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "no metric to report" in err and "BaseDataModule" in err and "--metric" in err
    code = sweep.main(
        [
            "--config",
            str(ROOT / "configs/e2e/gpt2-medium.yaml"),
            "--output_dir",
            str(tmp_path / "e"),
            "--dry-run",
            "--data.init_args.test_path",
            "null",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no metric to report" in err and "data.init_args.test_path" in err


def test_own_texts_plan_with_the_metrics_they_log(tmp_path):
    """configs/own-data/classification.yaml needs no --metric: the validation metrics the DataModule logs
    (accuracy; Pearson and Spearman for regression; the ones named in data.init_args.metrics)."""
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    config = str(ROOT / "configs/own-data/classification.yaml")
    train = [f"--data.init_args.train_path={tmp_path / 'train.csv'}"]

    def planned(*overrides: str, metric: str | None = None):  # noqa: ANN202
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        ((run, _),) = sweep.plan([config], [0], ["kasa"], out, [], [*train, *overrides], metric=metric)
        return run

    run = planned()  # the config names accuracy and F1
    assert (run.family, run.metrics, run.select, run.aggregate, run.test) == (
        "custom", ["val/accuracy", "val/f1"], "best", "median", False
    )  # fmt: skip
    assert planned("--data.init_args.metrics=null").metrics == ["val/accuracy"]
    regression = planned("--data.init_args.num_labels=1", "--data.init_args.metrics=null")
    assert regression.metrics == ["val/pearson", "val/spearman"]
    assert planned("--data.init_args.metrics=[f1, mcc]").metrics == ["val/f1", "val/mcc"]
    assert planned(metric="val/f1").metrics == ["val/f1", "val/accuracy"]
    assert planned(metric="test/f1").test
