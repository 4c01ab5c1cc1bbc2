"""The command line: fit/validate with configs, composition and overrides, saved config, export, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning_helpers import MINILM, TINY_BERT

from kasa_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SMALL = [
    "--data.init_args.train_size",
    "48",
    "--data.init_args.val_size",
    "16",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.accelerator",
    "cpu",
]


def _fit(root: Path, *extra: str):
    return main(["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(root), *SMALL, *extra])


def test_quickstart_config_runs_and_keeps_everything_under_root_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _fit(tmp_path / "run", "--model.adapter.r", "4")
    assert cli.model.adapter_config.r == 4  # dotted override of a nested dataclass field
    files = {p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "lightning_logs/version_0/config.yaml" in files
    assert any(f.startswith("lightning_logs/version_0/events.out.tfevents") for f in files)
    assert "lightning_logs/version_0/checkpoints/last.ckpt" in files
    saved = yaml.safe_load((tmp_path / "run/lightning_logs/version_0/config.yaml").read_text())
    assert saved["model"]["init_args"]["adapter"]["r"] == 4
    assert saved["trainer"]["default_root_dir"] == str(tmp_path / "run")
    assert not list(Path.cwd().glob("runs/quickstart"))  # nothing written to the config's default place
    assert "val/accuracy" in cli.trainer.callback_metrics
    # the tokenizer and the task/num_labels travelled from model and data
    assert cli.datamodule.tokenizer_name == MINILM and cli.model.num_labels == 2
    # a second run in the same place (the config file is overwritten, not refused)
    _fit(tmp_path / "run")


def test_composed_configs_and_misspelled_key(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  init_args:\n    adapter:\n      method: lora\n      r: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--config", str(overlay), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["adapter"]["method"] == "lora"
    assert printed["model"]["init_args"]["adapter"]["r"] == 2
    assert printed["model"]["init_args"]["adapter"]["alpha"] == 16.0  # from the first file
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--model.adaptr.r", "4"])
    assert exit_info.value.code != 0
    assert "adaptr" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
)
def test_every_shipped_config_parses(name, capsys):
    args = ["fit", "--config", str(QUICKSTART)] if name.startswith("strategies/") else ["fit"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--config", str(ROOT / "configs" / name), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err


def test_export_formats_reload_to_the_same_outputs(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from kasa_lightning import KaSAModule
    from kasa_lightning.hub import resolve_pretrained

    _fit(tmp_path / "run", "--trainer.max_steps", "3")
    ckpt = tmp_path / "run/lightning_logs/version_0/checkpoints/last.ckpt"
    module = KaSAModule.load_from_checkpoint(ckpt).eval()
    ids = torch.randint(1000, 2000, (2, 12))
    with torch.no_grad():
        expected = module(input_ids=ids).logits
    base_path = resolve_pretrained(MINILM)

    def base():
        return AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2).eval()

    for fmt in ("peft-kasa", "peft-lora", "merged", "adapter"):
        out = tmp_path / fmt
        main(["export", "--ckpt_path", str(ckpt), "--format", fmt, "--output_dir", str(out)])
        if fmt.startswith("peft"):
            config = json.loads((out / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == base_path  # pkg:// resolved: transformers loads it
            model = peft.PeftModel.from_pretrained(base(), str(out)).eval()
        elif fmt == "merged":
            model = AutoModelForSequenceClassification.from_pretrained(out).eval()
            assert (out / "tokenizer.json").exists()
        else:
            from kasa_lightning import load_adapter

            model = load_adapter(base(), out / "adapter.safetensors").eval()
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4, msg=fmt)


def test_export_rejects_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["export", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--output_dir", str(tmp_path)])


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_adapters(tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "devices": 2,
            "max_steps": 3,
            "enable_progress_bar": False,
            "logger": False,
            "enable_checkpointing": False,
            "callbacks": [
                {
                    "class_path": "lightning_helpers.SaveAdapterState",
                    "init_args": {"directory": str(tmp_path / "ranks")},
                }
            ],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 4}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 32, "val_size": 8, "batch_size": 4, "max_length": 32},
        },
    }
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kasa_lightning",
            "fit",
            "--config",
            str(cfg),
            "--config",
            str(ROOT / "configs/strategies/ddp.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "ranks/rank0.pt")
    r1 = torch.load(tmp_path / "ranks/rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


@pytest.mark.slow
def test_quickstart_as_shipped_reaches_90_percent(tmp_path):
    """The README's main job, unchanged except where it writes (about 40 s on 2 CPU cores)."""
    cli = main(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert float(cli.trainer.callback_metrics["val/accuracy"]) >= 0.90
