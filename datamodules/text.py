"""``TextClassificationDataModule``: your own labelled texts (one text or a pair per row) for classification or
regression, from local CSV / TSV / JSON lines / JSON / Parquet files or a Hugging Face Hub dataset.

Rows are read by the strict readers of ``datamodules/text_files.py`` (a bad row is a ``DataFileError`` naming its
file and line), then checked here: an empty text, a missing label or a regression label that is not a finite number
is refused with its line. Local files and Hub datasets take the same path after loading.

Labels. Classification labels are read as text and mapped to ids 0..K-1 in sorted order (numerically when every
label is an integer, ``"10"`` after ``"9"``; otherwise alphabetically), or in the order of ``label_names`` when it is
given. The mapping comes from the training data, so validation, test and predict runs give the same ids whatever
their files hold; a label in another file that the training data lacks is refused with its line. The mapping is
saved in every checkpoint (the DataModule's state); a run from a checkpoint whose mapping differs is refused, and
``predict`` writes label names: ``{"prediction": "<label>", "label_id": <id>}``. ``num_labels: 1`` makes it
regression (float labels, ``model.task`` regression, Pearson and Spearman).

Splits. ``val_path`` (and ``test_path``) name their own files; without ``val_path`` a seeded ``val_fraction`` of
the training rows (default 0.1; 0 for none) is held out. ``predict`` reads ``predict_path`` (else ``test_path``,
else ``val_path``), where the label column may be absent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from kasa_lightning.datamodules.base import BaseDataModule
from kasa_lightning.datamodules.errors import DataFileError
from kasa_lightning.datamodules.text_files import Record, read_hub, read_table
from kasa_lightning.hub import is_local_path

log = logging.getLogger(__name__)

_DEFAULT_VAL_FRACTION = 0.1


def sorted_labels(values: Sequence[str]) -> list[str]:
    """The distinct label strings in id order: by integer value when all are integers, else alphabetically."""
    distinct = set(values)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


class TextClassificationDataModule(BaseDataModule):
    """Classification or regression of your own texts; see the module docstring.

    Args:
        train_path: a local ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet`` file, or a Hub dataset name.
        val_path: validation rows (file or Hub name); ``None``: ``val_fraction`` of the training rows.
        test_path: test rows (file or Hub name), for ``test``.
        predict_path: rows to predict (the label column may be absent); ``None``: ``test_path``, else ``val_path``.
        text_column: the column holding the text.
        text_pair_column: a second text column (sentence pairs), or ``None``.
        label_column: the column holding the label (a class name or id; a number for regression).
        num_labels: ``1`` for regression; otherwise the number of classes (``None``: the number of distinct labels
            in the training data, or of ``label_names``).
        label_names: the class labels in id order (as they appear in the files); ``None``: sorted, see above.
        val_fraction: fraction of the training rows held out for validation (seeded with ``seed``) when
            ``val_path`` is not given; ``None`` means 0.1, ``0`` no validation.
        metrics: metric names (``kasa_lightning.metrics.standard``): ``accuracy``, ``f1``, ``mcc`` for
            classification, ``pearson``, ``spearman`` for regression; ``None``: accuracy, or Pearson and Spearman.
        train_split / val_split / test_split: the Hub splits read for a Hub dataset name.
        max_train_samples: use only the first N training rows (quick runs).
        tokenizer, batch_size, eval_batch_size, max_length, num_workers, seed, global_batch_size: see
            ``BaseDataModule``.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        num_labels: int | None = None,
        label_names: list[str] | None = None,
        val_fraction: float | None = None,
        metrics: list[str] | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        max_train_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_labels is not None and num_labels < 1:
            raise ValueError(f"data.num_labels={num_labels}: 1 for regression, >= 2 classes for classification")
        if label_names is not None:
            label_names = [str(name) for name in label_names]
            if len(set(label_names)) != len(label_names) or len(label_names) < 2:
                raise ValueError(f"data.label_names={label_names}: give two or more distinct labels")
            if num_labels is not None and num_labels != len(label_names):
                raise ValueError(f"data.num_labels={num_labels} but data.label_names has {len(label_names)} labels")
            if num_labels == 1:
                raise ValueError("data.label_names is for classification; regression (num_labels 1) has none")
        if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if val_fraction and val_path is not None:
            raise ValueError("data.val_fraction and data.val_path both set: give one source of validation rows")
        if max_train_samples is not None and max_train_samples < 1:
            raise ValueError(f"data.max_train_samples={max_train_samples} must be >= 1")
        self.paths = {"train": train_path, "val": val_path, "test": test_path, "predict": predict_path}
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": test_split}
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.regression = num_labels == 1
        self._given_num_labels = num_labels
        self._label_names: list[str] | None = label_names
        self.val_fraction = _DEFAULT_VAL_FRACTION if val_fraction is None and val_path is None else val_fraction
        self.max_train_samples = max_train_samples
        self.metric_names = metrics
        if metrics is not None and num_labels is not None:
            from kasa_lightning.metrics.standard import check_metric_names

            check_metric_names(metrics, num_labels)
        self.stats: dict[str, int] = {"truncated": 0}
        self._raw: dict[str, list[Record]] = {}

    # ------------------------------------------------------------------ what the model is linked to
    @property
    def task(self) -> str:  # type: ignore[override]
        return "regression" if self.regression else "classification"

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names or [])

    @property
    def label_names(self) -> list[str] | None:
        """The class labels in id order (``None`` for regression); read from the training data when not given."""
        if self.regression:
            return None
        if self._label_names is None:
            if self.paths["train"] is None:
                raise ValueError(
                    "data.train_path is not set, so the labels are unknown: give data.train_path (the labels are "
                    "read from it) or data.label_names"
                )
            names = sorted_labels([self._label(row, where) for where, row in self._records("train")])
            if len(names) < 2:
                raise DataFileError(
                    f"data.train_path: {self.paths['train']} has one label value {names}; classification needs two "
                    "or more (num_labels 1 for regression)"
                )
            if self._given_num_labels is not None and self._given_num_labels != len(names):
                raise ValueError(
                    f"data.num_labels={self._given_num_labels}, but data.train_path has {len(names)} labels {names}; "
                    "give data.label_names to name every class"
                )
            self._label_names = names
        return self._label_names

    # ------------------------------------------------------------------ reading
    def _columns(self, labelled: bool) -> tuple[list[str], list[str]]:
        texts = [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        return (texts + [self.label_column], []) if labelled else (texts, [self.label_column])

    def _records(self, split: str) -> list[Record]:
        """The raw rows of ``split`` (read once)."""
        if split not in self._raw:
            path, setting = self.paths[split], f"data.{split}_path"
            columns, optional = self._columns(labelled=split != "predict")
            if path is None:
                raise ValueError(f"{setting} is not set")
            if is_local_path(path):
                records = read_table(path, columns, optional, setting)
            else:
                records = read_hub(path, self.splits[split], columns, optional, setting)
            if split == "train" and self.max_train_samples is not None:
                records = records[: self.max_train_samples]
            self._raw[split] = records
        return self._raw[split]

    def _label(self, row: dict[str, Any], where: str) -> str:
        value = row[self.label_column]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataFileError(f"{where}: the label ({self.label_column!r}) is empty; every row needs one")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a label 1.0 of a float column is the class "1"
        return str(value).strip()

    def _example(self, row: dict[str, Any], where: str, ids: dict[str, int] | None) -> dict[str, Any]:
        """One checked row ``{"text_a", "text_b", "label"}`` (``label`` None when ``ids`` is None: predict)."""
        texts = []
        for column in filter(None, (self.text_column, self.text_pair_column)):
            text = row[column]
            if not isinstance(text, str) or not text.strip():
                what = "empty" if text is None or isinstance(text, str) else f"a {type(text).__name__}, not text"
                raise DataFileError(f"{where}: the text column {column!r} is {what}")
            texts.append(text)
        example: dict[str, Any] = {"text_a": texts[0], "text_b": texts[1] if len(texts) > 1 else None, "label": None}
        if ids is None:
            return example
        if self.regression:
            value = row[self.label_column]
            try:
                score = float(value)
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                raise DataFileError(f"{where}: regression label {value!r} is not a finite number")
            example["label"] = score
            return example
        label = self._label(row, where)
        if label not in ids:
            raise DataFileError(
                f"{where}: label {label!r} is not among the training labels {list(ids)}; fix the row, or give "
                "data.label_names with every class"
            )
        example["label"] = ids[label]
        return example

    def _examples(self, split: str) -> list[dict[str, Any]]:
        ids = None
        if split != "predict":
            ids = {} if self.regression else {name: i for i, name in enumerate(self.label_names or [])}
        return [self._example(row, where, ids) for where, row in self._records(split)]

    # ------------------------------------------------------------------ tokenising
    def _tokenize(self, examples: list[dict[str, Any]], split: str) -> Any:
        import datasets

        tok, limit, pair = self.tokenizer, self.max_length, self.text_pair_column is not None

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
            full = tok(*texts)["input_ids"]
            enc = dict(tok(*texts, truncation=True, max_length=limit))
            enc["overlong"] = [len(ids) > limit for ids in full]
            if batch["label"][0] is not None:
                enc["labels"] = batch["label"]
            return enc

        label = datasets.Value("float32" if self.regression else "int64")
        features = datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label}
        )
        data = datasets.Dataset.from_list(examples, features=features)
        data = data.map(encode, batched=True, remove_columns=data.column_names, desc=f"tokenize {split}")
        over = sum(data["overlong"])
        if over:
            self.stats["truncated"] += over
            log.info("%s: %d of %d rows longer than data.max_length=%d, truncated", split, over, len(data), limit)
        return self._check(data.remove_columns("overlong"), split)

    def setup(self, stage: str | None = None) -> None:
        fit = stage in (None, "fit")
        if fit and self.train_set is None:
            train = self._examples("train")
            if self.val_fraction and self.paths["val"] is None:
                train, val = _split(train, self.val_fraction, self.seed)
                self.val_set = self._tokenize(val, "validation")
            self.train_set = self._tokenize(train, "train")
        if stage in (None, "fit", "validate") and self.val_set is None and self.paths["val"] is not None:
            self.val_set = self._tokenize(self._examples("val"), "validation")
        if stage in (None, "test") and self.test_set is None and self.paths["test"] is not None:
            self.test_set = self._tokenize(self._examples("test"), "test")
        if stage == "predict" and self.predict_set is None:
            split = next((s for s in ("predict", "test", "val") if self.paths[s] is not None), None)
            if split is None:
                raise ValueError("predict needs data.predict_path (or data.test_path / data.val_path)")
            if split != "predict":
                self.paths["predict"], self.splits["predict"] = self.paths[split], self.splits[split]
            self.predict_set = self._tokenize(self._examples("predict"), "predict")

    def _check(self, data: Any, split: str) -> Any:
        if data is None:
            setting = {"validation": "data.val_path or data.val_fraction", "test": "data.test_path"}.get(split)
            if setting:
                raise ValueError(f"TextClassificationDataModule: no {split} rows; set {setting}")
        return super()._check(data, split)

    # ------------------------------------------------------------------ evaluation and checkpoints
    def build_metrics(self, stage: str) -> dict[str, Any]:
        from kasa_lightning.metrics.standard import standard_metrics

        names = self.metric_names or (["pearson", "spearman"] if self.regression else ["accuracy"])
        return standard_metrics(names, self.num_labels)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(super().state_dict())
        if self.trainer is not None and not self.regression:
            state["label_names"] = list(self.label_names or [])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state.pop("label_names", None)
        if saved is not None and not self.regression:
            mine = self._label_names
            if mine is None and self.paths["train"] is not None:
                mine = self.label_names  # read from the training data
            if mine is not None and list(mine) != list(saved):
                raise ValueError(
                    f"the checkpoint was trained with labels {saved} (ids in this order), the data gives {mine}; "
                    f"give data.label_names={saved} to keep the checkpoint's ids"
                )
            self._label_names = list(saved)
        super().load_state_dict(state)


def _split(examples: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation): a seeded random ``fraction`` of the rows (at least one) held out."""
    import torch

    if len(examples) < 2:
        raise DataFileError(f"data.val_fraction={fraction}: the training data has {len(examples)} row(s), too few")
    held = max(1, round(len(examples) * fraction))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(order[:held])
    return (
        [e for i, e in enumerate(examples) if i not in held_out],
        [examples[i] for i in sorted(held_out)],
    )
