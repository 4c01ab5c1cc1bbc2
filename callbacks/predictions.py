"""``JsonlPredictionWriter``: every prediction of ``trainer.predict`` as one JSON line.

Causal LM predictions (``KaSAModule.predict_step``) are lists of dicts from the DataModule's
``format_prediction`` (e.g. FastChat answer lines for MT-Bench); each dict becomes one line. Tensors (class ids,
regression scores) become ``{"prediction": value}`` lines, one per example.

Lines are streamed, batch by batch, into a temporary file next to ``output_path`` that replaces it
(``os.replace``) only when predict ends, so a crashed or interrupted run never leaves a partial file under the
final name (the temporary file is removed on an exception). With more than one process, every rank writes its own
file, ``<stem>.rank<k><suffix>`` (the distributed sampler splits, and may pad, the data; merge them afterwards).

YAML::

    trainer:
      callbacks:
        - class_path: kasa_lightning.callbacks.predictions.JsonlPredictionWriter
          init_args: {output_path: predictions/mt_bench_answers.jsonl}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def _to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def prediction_lines(prediction: Any) -> list[dict[str, Any]]:
    """The JSON objects of one ``predict_step`` result."""
    if prediction is None:
        return []
    if isinstance(prediction, dict):
        return [prediction]
    if isinstance(prediction, torch.Tensor):
        return (
            [{"prediction": row} for row in prediction.detach().cpu().tolist()]
            if prediction.ndim
            else [{"prediction": prediction.item()}]
        )
    if isinstance(prediction, (list, tuple)):
        lines: list[dict[str, Any]] = []
        for item in prediction:
            if isinstance(item, dict):
                lines.append(item)
            elif isinstance(item, (torch.Tensor, list, tuple)):
                lines += prediction_lines(item)
            else:
                lines.append({"prediction": item})
        return lines
    return [{"prediction": prediction}]


class JsonlPredictionWriter(BasePredictionWriter):
    """Write predictions to ``output_path`` as JSON lines (atomically; one file per rank when distributed).

    Args:
        output_path: the ``.jsonl`` file to write (parent folders are created).
        ensure_ascii: escape non-ASCII characters (default: write UTF-8 text as is).
    """

    def __init__(self, output_path: str | os.PathLike, ensure_ascii: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        self.ensure_ascii = ensure_ascii
        self._handle: IO[str] | None = None
        self._tmp: Path | None = None
        self.written: Path | None = None
        self.lines = 0

    def path_for(self, rank: int, world_size: int) -> Path:
        """The file a rank writes: ``output_path``, or ``<stem>.rank<k><suffix>`` when ``world_size > 1``."""
        if world_size <= 1:
            return self.output_path
        return self.output_path.with_name(f"{self.output_path.stem}.rank{rank}{self.output_path.suffix}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(remove=True)  # a previous run that died without on_exception
        target = self.path_for(trainer.global_rank, trainer.world_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        self._handle = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in on_predict_end)
        self.lines = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self._handle is None:
            raise RuntimeError("JsonlPredictionWriter: write_on_batch_end before on_predict_start")
        for line in prediction_lines(prediction):
            self._handle.write(json.dumps(line, ensure_ascii=self.ensure_ascii, default=_to_json) + "\n")
            self.lines += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is None or self._tmp is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        target = self.path_for(trainer.global_rank, trainer.world_size)
        os.replace(self._tmp, target)
        self._handle = self._tmp = None
        self.written = target

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close(remove=True)

    def _close(self, remove: bool) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if remove and self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tmp = None


class DefaultPredictionWriter(JsonlPredictionWriter):
    """The writer ``predict`` uses when ``trainer.callbacks`` names none (without one, Lightning keeps predictions
    in memory and the command printed nothing): ``<default_root_dir>/predictions/predictions-<time>.jsonl``, and a
    line saying where they went."""

    @classmethod
    def under(cls, root: str | os.PathLike) -> DefaultPredictionWriter:
        import time

        return cls(Path(root) / "predictions" / f"predictions-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_end(trainer, pl_module)
        if trainer.is_global_zero and self.written is not None:
            print(
                f"predict: {self.lines} predictions written to {self.written} (the default writer; name a "
                "prediction writer, e.g. kasa_lightning.callbacks.predictions.JsonlPredictionWriter, in "
                "trainer.callbacks to choose the file)",
                flush=True,
            )
