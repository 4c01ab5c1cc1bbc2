"""Bad command-line values end in a short error whose last line names the setting as the user wrote it: values that
a class refuses when LightningCLI builds it (``--model.adapter.r 0``), and a ``--ckpt_path`` that is a folder or an
adapter ``.safetensors`` file. Old code: 70-110 lines of jsonargparse traceback ending in a ``Namespace(...)`` dump, a
raw ``IsADirectoryError``, "does not exist" for a folder, and "a pickle that could run code" for a safetensors file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kasa_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SMALL = ["--data.init_args.train_size", "16", "--data.init_args.val_size", "8", "--trainer.max_steps", "1"]


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m kasa_lightning *args`` as its own process (started together: each spends most of its time on
    imports)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kasa_lightning", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("option", "value", "named", "rule"),
    [
        ("--model.adapter.alpha", "-1", "model.adapter.alpha=-1.0", "alpha must be >= 0"),
        ("--model.adapter.dropout", "1.5", "model.adapter.dropout=1.5", "[0, 1)"),
        ("--data.init_args.batch_size", "0", "data.init_args.batch_size=0", ">= 1"),
        ("--data.batch_size", "0", "data.batch_size=0", ">= 1"),
        ("--model.init_args.adapter.r", "-3", "model.init_args.adapter.r=-3", "positive integer"),
    ],
)
def test_values_refused_at_construction_name_the_setting_as_written(tmp_path, capsys, option, value, named, rule):
    root = tmp_path / "root"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(root), option, value])
    assert exit_info.value.code == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) <= 20, err
    assert named in err[-1] and rule in err[-1], err[-1]
    assert not root.exists()


def test_other_invalid_input_keeps_its_own_error(tmp_path, capsys):
    """A parse error (a value outside a Literal) is jsonargparse's, naming the option, as before."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--model.adapter.reg_form", "nonsense"])
    assert exit_info.value.code != 0
    assert "reg_form" in capsys.readouterr().err


def _checkpoint_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.ckpt", "best-epoch=0-step=2.ckpt"):
        torch.save({"state_dict": {}, "global_step": 2}, folder / name)
    return folder


def test_fit_from_the_shell_rank_zero_and_a_folder_as_ckpt_path(tmp_path):
    """The two outside checks, as real processes: ``--model.adapter.r 0`` prints at most 20 non-empty lines, the
    last naming ``model.adapter.r``, its value and the rule; a folder as ``--ckpt_path`` ends with a line naming
    ``--ckpt_path`` that says it is a folder, after the list of its .ckpt files. Neither creates a run folder."""
    folder = _checkpoint_folder(tmp_path)
    common = ["fit", "--config", str(QUICKSTART), *SMALL]
    rank = _start(*common, "--trainer.default_root_dir", str(tmp_path / "r0"), "--model.adapter.r", "0", cwd=tmp_path)
    ckpt = _start(*common, "--trainer.default_root_dir", str(tmp_path / "f"), "--ckpt_path", str(folder), cwd=tmp_path)
    (rank_rc, rank_out, rank_err), (ckpt_rc, _, ckpt_err) = _finish(rank), _finish(ckpt)

    assert rank_rc == 2, rank_err[-3000:]
    lines = _lines(rank_out + rank_err)
    assert len(lines) <= 20, lines
    last = _lines(rank_err)[-1]
    assert "model.adapter.r=0" in last and "positive integer" in last, last
    assert "Namespace(" not in rank_err and "Traceback" not in rank_err

    assert ckpt_rc == 2, ckpt_err[-3000:]
    last = _lines(ckpt_err)[-1]
    assert "--ckpt_path" in last and "is a folder" in last, last
    assert str(folder / "last.ckpt") in ckpt_err and str(folder / "best-epoch=0-step=2.ckpt") in ckpt_err
    assert "IsADirectoryError" not in ckpt_err
    assert not (tmp_path / "r0").exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize("command", ["validate", "test", "predict", "export"])
def test_every_command_refuses_a_folder_as_ckpt_path(tmp_path, capsys, command):
    folder = _checkpoint_folder(tmp_path)
    if command == "export":
        args = ["export", "--ckpt_path", str(folder), "--output_dir", str(tmp_path / "out")]
    else:
        args = [
            command,
            "--config",
            str(QUICKSTART),
            "--trainer.default_root_dir",
            str(tmp_path / "root"),
            "--ckpt_path",
            str(folder),
        ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = _lines(capsys.readouterr().err)
    assert "--ckpt_path" in err[-1] and "is a folder" in err[-1] and "last.ckpt" in err[-1], err[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "root").exists()


@pytest.fixture
def adapter_file(tmp_path, tiny_bert) -> Path:
    from kasa_lightning import AdapterConfig, apply_adapters, save_adapter

    apply_adapters(tiny_bert, AdapterConfig(r=2, target_modules=["query", "value"]))
    return save_adapter(tiny_bert, tmp_path / "adapter.safetensors")


@pytest.mark.parametrize("command", ["validate", "export"])
def test_an_adapter_file_as_ckpt_path_is_named_with_its_use(tmp_path, capsys, adapter_file, command):
    if command == "export":
        args = ["export", "--ckpt_path", str(adapter_file), "--output_dir", str(tmp_path / "out")]
    else:
        args = [command, "--config", str(QUICKSTART), "--ckpt_path", str(adapter_file)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    last = _lines(capsys.readouterr().err)[-1]
    assert "--ckpt_path" in last and "adapter file" in last and "load_adapter" in last, last
    assert "pickle" not in last and "run code" not in last
    assert not (tmp_path / "out").exists()


def test_load_from_checkpoint_of_an_adapter_file_says_what_it_is(adapter_file):
    from kasa_lightning import KaSAModule

    with pytest.raises(Exception, match="adapter file .*load_adapter") as info:
        KaSAModule.load_from_checkpoint(adapter_file)
    assert "pickle" not in str(info.value)


def test_default_root_dir_under_a_file_names_the_setting(tmp_path, capsys):
    """Old code: a raw NotADirectoryError from os.makedirs."""
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path / "afile/run")])
    assert exit_info.value.code == 2
    last = _lines(capsys.readouterr().err)[-1]
    assert "trainer.default_root_dir" in last and "is a file" in last and str(tmp_path / "afile") in last, last


def test_a_failed_start_and_a_failed_export_leave_no_empty_folders(tmp_path):
    """Old code: ``<root>`` (and the folders above it that the run made) stayed behind empty after a fit that failed
    while loading its checkpoint; ``--output_dir`` stayed behind empty after an export that failed the same way."""
    from kasa_lightning.training.checkpoint_io import UnsafeCheckpointError

    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not really a zip archive")
    root = tmp_path / "new" / "root"
    with pytest.raises(UnsafeCheckpointError):
        main(
            [
                "fit",
                "--config",
                str(QUICKSTART),
                *SMALL,
                "--trainer.default_root_dir",
                str(root),
                "--ckpt_path",
                str(broken),
            ]
        )
    assert not (tmp_path / "new").exists()
    out = tmp_path / "export"
    with pytest.raises(UnsafeCheckpointError):
        main(["export", "--ckpt_path", str(broken), "--output_dir", str(out)])
    assert not out.exists()


def test_predict_without_a_writer_writes_the_predictions_to_a_file(tmp_path, capsys):
    """Old code: exit 0, nothing printed, nothing written (Lightning kept the predictions in memory)."""
    import json

    root = tmp_path / "root"
    main(
        [
            "predict",
            "--config",
            str(QUICKSTART),
            *SMALL,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    (written,) = (root / "predictions").glob("predictions-*.jsonl")
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 8 and all(row["prediction"] in (0, 1) for row in rows)  # the 8 validation sentences
    assert f"predict: 8 predictions written to {written}" in capsys.readouterr().out


def test_validate_ckpt_path_best_uses_the_newest_runs_best_checkpoint(tmp_path, capsys):
    """Old code: "`.validate(ckpt_path="best")` is set but `ModelCheckpoint` is not configured to save the best
    model" in a new process, although the config monitors a metric."""
    import json

    root = tmp_path / "root"
    small = ["--data.init_args.train_size", "16", "--data.init_args.val_size", "8", "--trainer.max_epochs", "1"]
    common = ["--config", str(QUICKSTART), *small, "--trainer.default_root_dir", str(root)]
    with pytest.raises(SystemExit) as exit_info:  # no run yet: refused, saying why and what to pass
        main(["validate", *common, "--ckpt_path", "best"])
    assert exit_info.value.code == 2
    assert "no run under trainer.default_root_dir" in _lines(capsys.readouterr().err)[-1]

    main(["fit", *common, "--trainer.enable_progress_bar", "false"])
    fit = json.loads((root / "lightning_logs/version_0/metrics.json").read_text())["fit"]
    cli = main(["validate", *common, "--ckpt_path", "best", "--trainer.enable_progress_bar", "false"])
    assert f"--ckpt_path best: {fit['best_model_path']}" in capsys.readouterr().err
    assert cli.trainer.callback_metrics["val/accuracy"].item() == pytest.approx(fit["best_model_score"])
