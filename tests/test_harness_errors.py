"""``python -m kasa_lightning eval``: bad input refused naming the setting, Hub data that cannot be had offline
refused at once, lm-eval imported only by the command, and the shipped example task run offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from harness_support import MODEL_ARGS, ROOT, build, run_eval  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("harness"))


def _fails(args: list[str], capsys) -> str:
    from kasa_lightning.harness import main

    assert main(args) == 2
    return capsys.readouterr().err


def test_bad_input_is_refused_naming_the_setting(setup, tmp_path: Path, capsys, monkeypatch) -> None:
    model = ["--model.backbone", str(setup["model"]), *MODEL_ARGS]
    err = _fails(model + ["--tasks", "tiny_colors", "--include_path", str(tmp_path / "nowhere")], capsys)
    assert "--include_path" in err and "no such directory" in err
    err = _fails(
        ["--model.backbone", str(setup["model"]), "--model.task", "causal_lm"]
        + ["--model.backbone_config", '{"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4}']
        + ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"])],
        capsys,
    )
    assert "model.backbone_config" in err and "--ckpt_path" in err and "random" in err
    err = _fails(
        ["--model.backbone", str(setup["model"]), "--tasks", "tiny_colors", "--include_path", str(setup["tasks"])],
        capsys,
    )
    assert "model.task" in err and "causal_lm" in err  # the default task is classification
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = _fails(model + ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"])], capsys)
    assert "one process" in err and "WORLD_SIZE=2" in err
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    err = _fails(model + ["--tasks", "tiny_colors"], capsys)
    assert 'pip install "kasa-lightning[eval]"' in err


@pytest.mark.slow  # lm-eval indexes its ~14,700 tasks (about 20 s) to know a name is not there
def test_unknown_task_is_refused_with_suggestions(setup, capsys) -> None:
    model = ["--model.backbone", str(setup["model"]), *MODEL_ARGS]
    err = _fails(model + ["--tasks", "tiny_colors,arc_easyy", "--include_path", str(setup["tasks"])], capsys)
    assert "unknown task(s) 'arc_easyy'" in err and "arc_easy" in err and "--include_path" in err


def _hub_task(tasks: Path) -> None:
    tasks.mkdir()
    (tasks / "hub.yaml").write_text(
        "task: needs_hub\ndataset_path: no-such-org/no-such-dataset\ndataset_name: main\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
    )


def test_uncached_hub_data_fails_at_once_offline_and_without_network(setup, tmp_path: Path, monkeypatch) -> None:
    import datasets
    from huggingface_hub import constants

    from kasa_lightning.harness import TaskDataUnavailableError, prepare_tasks

    _hub_task(tmp_path / "tasks")
    t0 = time.monotonic()
    with pytest.raises(TaskDataUnavailableError) as info:
        prepare_tasks("needs_hub", str(tmp_path / "tasks"))
    message = str(info.value)
    for part in (
        "needs_hub",
        "'no-such-org/no-such-dataset' (main)",
        "offline mode",
        "--include_path",
        "data_files",
        "network",
    ):
        assert part in message
    # online mode, but the Hub does not answer (a closed local port): one probe, then the same refusal
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(TaskDataUnavailableError, match="cannot be reached"):
        prepare_tasks("needs_hub", str(tmp_path / "tasks"))
    assert time.monotonic() - t0 < 15  # huggingface_hub's retries alone take 26 s
    assert constants.HF_HUB_OFFLINE is False  # the forced offline mode was undone


def test_lm_eval_is_imported_only_by_the_eval_command() -> None:
    code = (
        "import sys, kasa_lightning.cli, kasa_lightning.harness;"
        "assert 'lm_eval' not in sys.modules, 'imported lm_eval';"
        "assert 'eval' in kasa_lightning.cli.COMMANDS"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def test_example_task_runs_offline_from_its_generated_data(setup, tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_capitals", ROOT / "examples/lm_eval_task/make_capitals.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    make.write(tmp_path / "capitals.jsonl")
    shipped = ROOT / "examples/lm_eval_task/capitals.jsonl"
    assert (tmp_path / "capitals.jsonl").read_bytes() == shipped.read_bytes()  # the script makes the shipped file
    monkeypatch.chdir(ROOT)  # the YAML's data_files path is relative to the repository root
    args = ["--seed_everything", "0", "--model.backbone", str(setup["model"]), *MODEL_ARGS]
    args += ["--tasks", "kasa_capitals", "--include_path", "examples/lm_eval_task", "--limit", "3"]
    written = run_eval(args + ["--output", str(tmp_path / "e.json")])
    assert written["n-samples"]["kasa_capitals"] == {"original": len(make.CAPITALS), "effective": 3}
    assert 0.0 <= written["results"]["kasa_capitals"]["acc,none"] <= 1.0
    monkeypatch.chdir(tmp_path)  # elsewhere, the relative data path is missing: said so
    from kasa_lightning.harness import EvalSetupError, prepare_tasks

    with pytest.raises(EvalSetupError, match="relative data_files paths are read from the working directory"):
        prepare_tasks("kasa_capitals", str(ROOT / "examples/lm_eval_task"))
