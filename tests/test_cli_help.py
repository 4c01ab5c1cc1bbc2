"""Finding the options from the command line, in a fresh process (where nothing but the CLI has been imported, as
for a user): short class names with ``--data.help`` / ``--trainer.callbacks.help``, ``--model.help`` and the group
headings of ``fit --help``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs each help command in one fresh interpreter, the short-name one first (before anything else is imported)
SCRIPT = """
import contextlib, io, json, sys
from kasa_lightning.cli import main
out = {}
for key, args in json.loads(sys.argv[1]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            main(args)
            code = 0
        except SystemExit as done:
            code = done.code
    out[key] = [code, buffer.getvalue()]
print(json.dumps(out))
"""


def test_short_names_model_help_and_full_headings():
    commands = [
        ("glue", ["fit", "--data.help", "GLUEDataModule"]),
        ("text", ["fit", "--data.help", "TextClassificationDataModule"]),
        ("callback", ["fit", "--trainer.callbacks.help", "RegularizerMonitor"]),
        ("model", ["fit", "--model.help", "KaSAModule"]),
        ("fit", ["fit", "--help"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(commands)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    for key, (code, text) in result.items():
        assert code == 0, (key, text[-2000:])
    assert "--data.task TASK" in result["glue"][1] and "--data.data_dir" in result["glue"][1]
    assert "--data.text_pair_column" in result["text"][1] and "--data.val_fraction" in result["text"][1]
    assert "--trainer.callbacks.every_n_steps" in result["callback"][1]
    assert "--model.adapter" in result["model"][1] and "--model.warmup_steps" in result["model"][1]
    fit_help = result["fit"][1]
    heading = next(line for line in fit_help.splitlines() if line.startswith("The DataModule"))
    assert heading.endswith("resume state:")  # a whole sentence, not cut off
    assert "kasa_lightning.datamodules.TextClassificationDataModule" in fit_help  # listed as a known subclass
