"""``sweep --slurm_script FILE``: a SLURM job array whose task i runs the dry run's command i.

The script is checked as text (``#SBATCH --array``, one case arm per run equal to the printed dry-run line) and then
run the way SLURM runs an array task: ``bash FILE`` with ``SLURM_ARRAY_TASK_ID`` set, which trains that run where
the sweep expects it (and only that run).
"""

from __future__ import annotations

import json
import re
import subprocess

from test_sweep import _env, _tiny_config

from kasa_lightning.experiments import sweep


def test_slurm_job_array_runs_the_dry_runs_commands(tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.yaml")
    out, script = tmp_path / "sweep", tmp_path / "jobs" / "array.sh"
    args = ["--config", str(config), "--seeds", "0-1", "--methods", "kasa,lora", "--output_dir", str(out)]
    args += ["--trainer.max_steps", "2", "--trainer.max_epochs", "1"]

    assert sweep.main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out.strip().splitlines()
    assert sweep.main([*args, "--slurm_script", str(script)]) == 0  # implies --dry-run: nothing runs
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[:-1] == dry and printed[-1].endswith(f"submit with: sbatch {script}")
    assert not list(out.rglob("metrics.json"))

    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "\n#SBATCH --array=0-3\n" in text
    assert f"\n#SBATCH --output={out.resolve()}/.slurm/%A_%a.out\n" in text
    arms = re.findall(r"^  (\d+)\) (.*) ;;$", text, flags=re.MULTILINE)
    assert [int(i) for i, _ in arms] == [0, 1, 2, 3] and [c for _, c in arms] == dry
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0  # valid bash

    # array task 2 (lora, seed 0), as SLURM starts it
    task = subprocess.run(
        ["bash", str(script)],
        env={**_env(), "SLURM_ARRAY_TASK_ID": "2"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert task.returncode == 0, task.stderr[-3000:]
    assert [p.parent.relative_to(out).as_posix() for p in out.rglob("metrics.json")] == ["tiny/lora/seed0"]
    metrics = json.loads((out / "tiny/lora/seed0/metrics.json").read_text())
    assert metrics["fit"]["global_step"] == 2

    # a task id without a run is an error, not a silent success
    stray = subprocess.run(
        ["bash", str(script)], env={**_env(), "SLURM_ARRAY_TASK_ID": "4"}, capture_output=True, text=True, check=False
    )
    assert stray.returncode == 2 and "no run for SLURM_ARRAY_TASK_ID=4" in stray.stderr
