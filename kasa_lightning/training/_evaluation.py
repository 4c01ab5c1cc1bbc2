"""Evaluation for ``KaSAModule``: metrics per stage and dataloader, generation-based scoring, best-epoch tracking
and prediction. Kept apart from the training logic in ``module.py``; what it reads from its host is
``EvaluationHost``.

What the DataModule may provide (all optional) is written as protocols in ``kasa_lightning.training.contracts``:
``ProvidesMetrics``, ``NamesEvalLoaders``, ``GeneratesForEval``, ``FormatsPredictions`` and ``NamesLabels``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from kasa_lightning.hub import resolve_pretrained
from kasa_lightning.training.contracts import (
    FormatsPredictions,
    GeneratesForEval,
    NamesEvalLoaders,
    NamesLabels,
    ProvidesMetrics,
)

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


class EvaluationHost(Protocol):
    """What the evaluation steps read from the LightningModule they are mixed into (``KaSAModule``)."""

    task: str
    num_labels: int
    generation: dict[str, Any]
    backbone_name: str
    model: Any  # the Hugging Face model with adapters (an untyped library), None until configure_model
    _trainer: Trainer | None
    _metrics: dict[str, nn.ModuleDict]  # per "<stage>:<dataloader index>", built on first use
    _val_losses: list[torch.Tensor]  # causal LM: the losses of the epoch, for the perplexity
    _best: dict[str, float]  # the best validation value per metric so far
    _tokenizer: Any  # the backbone's tokenizer, loaded on first use when the DataModule has none

    trainer: Trainer

    @property
    def device(self) -> torch.device: ...

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None: ...


# type checkers see the mixin as an implementation of the host's contract; at run time it is a plain class
if TYPE_CHECKING:
    _Host = EvaluationHost
else:
    _Host = object


class EvaluationMixin(_Host):
    """validation/test/predict steps of ``KaSAModule`` (mixed into a ``LightningModule``)."""

    def _datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def _loader_names(self, stage: str) -> list[str]:
        """Suffixes of the evaluation dataloaders (e.g. MNLI ["matched", "mismatched"]); [""] for one."""
        dm = self._datamodule()
        names = dm.eval_names(stage) if isinstance(dm, NamesEvalLoaders) else None
        return list(names) if names else [""]

    def _metric_dict(self, stage: str, dataloader_idx: int = 0) -> nn.ModuleDict:
        """One set of metric instances per stage and dataloader."""
        key = f"{stage}:{dataloader_idx}"
        if key not in self._metrics:
            dm = self._datamodule()
            if isinstance(dm, ProvidesMetrics):
                metrics = dm.build_metrics(stage)
            else:
                metrics = default_metrics(self.task, self.num_labels)
            self._metrics[key] = nn.ModuleDict(metrics).to(self.device)
        return self._metrics[key]

    def _generates(self, batch: dict[str, Any]) -> bool:
        dm = self._datamodule()
        return self.task == "causal_lm" and "targets" in batch and isinstance(dm, GeneratesForEval) and dm.eval_generate

    def generate_texts(self, batch: dict[str, Any]) -> list[str]:
        """Decoded continuations of the (left-padded) prompts in ``batch``, with the task's and the model's
        generation settings."""
        dm = self._datamodule()
        tokenizer = getattr(dm, "tokenizer", None) or self._own_tokenizer()
        kwargs = {**(dm.generation_kwargs if isinstance(dm, GeneratesForEval) else {}), **self.generation}
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        prompt = batch["input_ids"]
        out = self.model.generate(input_ids=prompt, attention_mask=batch.get("attention_mask"), **kwargs)
        return tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)

    def _own_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        tokenizer: Any = getattr(self, "_tokenizer")  # noqa: B009  (set in the host's __init__, Any)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.backbone_name))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return tokenizer

    def _eval_step(self, batch: dict[str, Any], stage: str, dataloader_idx: int = 0) -> None:
        metrics = self._metric_dict(stage, dataloader_idx)
        if self._generates(batch):
            texts = self.generate_texts(batch)
            for metric in metrics.values():
                cast(Any, metric).update(texts, batch["targets"])  # torchmetrics (an untyped library)
            return
        outputs = self.model(**batch)
        bs = batch["input_ids"].shape[0] if "input_ids" in batch else None
        suffix = self._loader_names(stage)[dataloader_idx] if dataloader_idx < len(self._loader_names(stage)) else ""
        if getattr(outputs, "loss", None) is not None:
            name = f"{stage}/loss" + (f"_{suffix}" if suffix else "")
            self.log(
                name, outputs.loss, prog_bar=stage == "val", batch_size=bs, sync_dist=True, add_dataloader_idx=False
            )
        if self.task == "causal_lm":
            if getattr(outputs, "loss", None) is not None:
                self._val_losses.append(outputs.loss.detach().float())
            return
        if "labels" not in batch:
            return
        preds = outputs.logits.squeeze(-1) if self.task == "regression" else outputs.logits.argmax(-1)
        for metric in metrics.values():
            cast(Any, metric).update(preds, batch["labels"])

    def _eval_epoch_end(self, stage: str) -> None:
        if self._val_losses:
            self.log(f"{stage}/perplexity", torch.exp(torch.stack(self._val_losses).mean()), sync_dist=True)
            self._val_losses.clear()
        names = self._loader_names(stage)
        values: dict[str, dict[str, float]] = {}
        for idx, suffix in enumerate(names):
            key = f"{stage}:{idx}"
            if key not in self._metrics:
                continue
            for name, module in self._metrics[key].items():
                metric = cast(Any, module)  # a torchmetrics Metric (an untyped library)
                result = metric.compute()
                flat = result if isinstance(result, dict) else {name: result}
                for metric_name, value in flat.items():
                    full = f"{stage}/{metric_name}" + (f"_{suffix}" if suffix else "")
                    value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
                    self.log(full, value, prog_bar=stage == "val", sync_dist=True, add_dataloader_idx=False)
                    values.setdefault(metric_name, {})[full] = float(value)
                metric.reset()
        if len(names) > 1:
            for metric_name, per_loader in values.items():
                if len(per_loader) == len(names):
                    self.log(f"{stage}/{metric_name}_average", sum(per_loader.values()) / len(names), sync_dist=True)
        if stage == "val" and not self.trainer.sanity_checking:
            for per_loader in values.values():
                for full, value in per_loader.items():  # the paper reports the best validation epoch
                    self._best[full] = max(value, self._best.get(full, float("-inf")))
                    self.log(f"{full}_best", self._best[full], sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Causal LM: ``[{**meta, "output": text}]`` (via the DataModule's ``format_prediction``);
        classification: predicted label ids, or ``[{"prediction": <label>, "label_id": <id>}]`` when the
        DataModule names its labels (``NamesLabels``); regression: predicted scores."""
        if self.task == "causal_lm":
            texts = self.generate_texts(batch)
            dm = self._datamodule()
            metas = batch.get("meta") or [{} for _ in texts]
            fmt = (
                dm.format_prediction
                if isinstance(dm, FormatsPredictions)
                else (lambda meta, text: {**meta, "output": text})
            )
            return [fmt(meta, text) for meta, text in zip(metas, texts)]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits
        if self.task == "regression":
            return logits.squeeze(-1)
        ids = logits.argmax(-1)
        dm = self._datamodule()
        names = dm.label_names if isinstance(dm, NamesLabels) else None
        if names:  # the DataModule's class names (the mapping saved in the checkpoint)
            return [{"prediction": names[i], "label_id": i} for i in ids.tolist()]
        return ids


def default_metrics(task: str, num_labels: int) -> dict[str, Any]:
    """Accuracy for classification, Pearson/Spearman for regression (torchmetrics)."""
    import torchmetrics

    if task == "classification":
        return {"accuracy": torchmetrics.classification.MulticlassAccuracy(num_classes=num_labels, average="micro")}
    if task == "regression":
        return {"pearson": torchmetrics.PearsonCorrCoef(), "spearman": torchmetrics.SpearmanCorrCoef()}
    return {}
