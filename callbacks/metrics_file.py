"""``MetricsFile``: each run's metrics in one JSON file, written by the run itself (not scraped from its logs).

The CLI installs it in every ``fit``/``validate``/``test`` run (``--metrics_file.path`` sets the file; default
``<log_dir>/metrics.json``). ``python -m kasa_lightning report`` reads these files. Format (``format`` 1)::

    {
      "format": 1,
      "fit": {                                  # written after every validation and at the end of fit
        "finished": true,                       # false while the run is still going (or was killed)
        "epochs": [                             # one entry per validation run, in order
          {"epoch": 0, "step": 32, "metrics": {"val/accuracy": 0.91, "val/accuracy_best": 0.91, "val/loss": 0.3}},
          ...
        ],
        "final": {"val/accuracy": 0.98, "train/loss": 0.05, ...},   # the trainer's metrics at the end of fit
        "global_step": 96, "epoch": 2,
        "best_model_path": ".../best-epoch=2-step=96.ckpt", "best_model_score": 0.98,
        "last_model_path": ".../last.ckpt"
      },
      "validate": {"metrics": {"val/accuracy": 0.98}, "ckpt_path": "..."},   # after `validate`
      "test": {"metrics": {"test/BLEU": 0.68, ...}, "ckpt_path": ".../last.ckpt"},  # after `test`
      "eval": {"tasks": {"arc_easy": {"metrics": {"acc,none": 0.71, "acc_stderr,none": 0.01, ...},
               "version": 1.0, "n_shot": 0, "limit": null, "ckpt_path": "...", "output": ".../eval.json"}}}
    }                                           # `eval` (lm-evaluation-harness, kasa_lightning.harness) adds tasks

Values are floats; keys are the logged names. The history of validation epochs is also kept in the checkpoints
(the callback's state), so a run resumed with ``--ckpt_path`` writes the whole history. A later ``fit`` into the
same file replaces its ``fit`` part and drops the ``test``/``validate``/``eval`` parts of the earlier model; ``test``
and ``validate`` replace only their own part, ``eval`` the tasks it scored. Only global rank 0 writes; the file is
replaced atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

FORMAT = 1


def _floats(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in sorted(metrics.items()):
        if key.startswith(prefixes):
            number = float(value)
            out[key] = number if math.isfinite(number) else None  # JSON has no NaN
    return out


class MetricsFile(L.Callback):
    """Write the run's validation history, final and test metrics to a JSON file (format in the module docstring).

    Args:
        path: the file; ``None``: ``<trainer.log_dir>/metrics.json`` (the version directory of the logger).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.epochs: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ where and how
    def file(self, trainer: L.Trainer) -> Path:
        if self.path:
            return Path(self.path)
        return Path(trainer.log_dir or trainer.default_root_dir) / "metrics.json"

    def _update(self, trainer: L.Trainer, **parts: Any) -> None:
        path = self.file(trainer)  # trainer.log_dir is a broadcast: every rank asks, rank 0 writes
        if not trainer.is_global_zero:
            return
        content = read_for_update(path)
        if "fit" in parts:  # a new model: results of the earlier one's validate/test no longer apply
            content.pop("test", None)
            content.pop("validate", None)
            content.pop("eval", None)
        content.update(parts)
        content["format"] = FORMAT
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(content, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def _fit_part(self, trainer: L.Trainer, finished: bool) -> dict[str, Any]:
        ckpt = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        score = ckpt.best_model_score if ckpt is not None else None
        return {
            "finished": finished,
            "epochs": list(self.epochs),
            "final": _floats(trainer.callback_metrics, ("val/", "train/")),
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "best_model_path": (ckpt.best_model_path or None) if ckpt is not None else None,
            "best_model_score": float(score) if score is not None else None,
            "last_model_path": (ckpt.last_model_path or None) if ckpt is not None else None,
        }

    # ------------------------------------------------------------------ hooks
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _floats(trainer.callback_metrics, ("val/",))
        if trainer.state.fn == "validate":
            self._update(trainer, validate={"metrics": metrics, "ckpt_path": trainer.ckpt_path})
            return
        entry = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step), "metrics": metrics}
        # a resumed run may validate again at a step it had validated before it stopped: keep the newer values
        self.epochs = [e for e in self.epochs if e["step"] != entry["step"]] + [entry]
        self._update(trainer, fit=self._fit_part(trainer, finished=False))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer, fit=self._fit_part(trainer, finished=True))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(
            trainer, test={"metrics": _floats(trainer.callback_metrics, ("test/",)), "ckpt_path": trainer.ckpt_path}
        )

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))


def read_for_update(path: Path) -> dict[str, Any]:
    """The content of a metrics file about to be updated: ``{}`` when there is none. A file that cannot be read as
    JSON (a damaged disk, an edit gone wrong) is not overwritten: it is renamed to ``<name>.unreadable-<time>`` and a
    warning names both files, so its history can still be recovered by hand."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        import time

        from lightning.pytorch.utilities import rank_zero_warn

        kept = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, kept)
        rank_zero_warn(f"{path} was unreadable ({type(err).__name__}: {err}); kept as {kept}, writing a new one")
        return {}
    return content if isinstance(content, dict) else {}
