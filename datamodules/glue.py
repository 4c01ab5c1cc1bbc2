"""``GLUEDataModule``: the eight GLUE tasks from the Hugging Face Hub (``nyu-mll/glue``) or a local GLUE directory.

Local layout: ``<data_dir>/<TASK>/{train,dev}.tsv`` as GLUE publishes them (MNLI: ``dev_matched.tsv`` and
``dev_mismatched.tsv``). The files are read as tab-separated text with quoting OFF (MRPC and others contain
unbalanced quote characters), MRPC's byte-order mark removed, CoLA without a header. Both sources become the
same rows ``{"text_a", "text_b", "label"}`` with the Hub's label order, then the same tokenisation
(``datasets.map``, cached) and metrics. GLUE's test splits have no labels, so ``test`` evaluates the validation
split(s), as the paper reports validation results. ``validate``, ``test`` and ``predict`` read and tokenise the
validation file(s) only (a folder holding just ``dev.tsv`` is enough), unless ``val_from_train`` carves the
validation rows out of the training file; from the Hub they download only the validation split(s)
(``load_hub_splits``). A malformed row or an empty file raises ``DataFileError`` naming the file
and line, as the last line of the traceback.

Metrics (torchmetrics, as GLUE defines them): CoLA Matthews correlation (``mcc``); SST-2, QNLI, RTE, MNLI
``accuracy`` (MNLI matched and mismatched with one metric instance each: ``val/accuracy_matched``,
``val/accuracy_mismatched``); MRPC and QQP ``accuracy`` and ``f1``; STS-B ``pearson`` and ``spearman``
(regression, ``num_labels=1``). The module also logs the best validation value so far as ``val/<name>_best``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kasa_lightning.datamodules.base import BaseDataModule
from kasa_lightning.datamodules.errors import DataFileError, data_errors, utf8_lines


@dataclass(frozen=True)
class GlueTask:
    hub_config: str
    folder: str
    hub_text: tuple[str, ...]  # Hub column names of the one or two texts
    local_text: tuple[str | int, ...]  # TSV header names (or column indexes when there is no header)
    local_label: str | int
    labels: tuple[str, ...] | None  # label values in the Hub's order; None for regression
    val_hub: tuple[str, ...] = ("validation",)
    val_files: tuple[str, ...] = ("dev.tsv",)
    val_names: tuple[str, ...] | None = None
    header: bool = True
    metrics: tuple[str, ...] = ("accuracy",)


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", "CoLA", ("sentence",), (3,), 1, ("0", "1"), header=False, metrics=("mcc",)),
    "sst2": GlueTask("sst2", "SST-2", ("sentence",), ("sentence",), "label", ("0", "1")),
    "mrpc": GlueTask(
        "mrpc",
        "MRPC",
        ("sentence1", "sentence2"),
        ("#1 String", "#2 String"),
        "Quality",
        ("0", "1"),
        metrics=("accuracy", "f1"),
    ),
    "qqp": GlueTask(
        "qqp",
        "QQP",
        ("question1", "question2"),
        ("question1", "question2"),
        "is_duplicate",
        ("0", "1"),
        metrics=("accuracy", "f1"),
    ),
    "stsb": GlueTask(
        "stsb",
        "STS-B",
        ("sentence1", "sentence2"),
        ("sentence1", "sentence2"),
        "score",
        None,
        metrics=("pearson", "spearman"),
    ),
    "mnli": GlueTask(
        "mnli",
        "MNLI",
        ("premise", "hypothesis"),
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        val_hub=("validation_matched", "validation_mismatched"),
        val_files=("dev_matched.tsv", "dev_mismatched.tsv"),
        val_names=("matched", "mismatched"),
    ),
    "qnli": GlueTask(
        "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment")
    ),
    "rte": GlueTask(
        "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")
    ),
}


def read_glue_tsv(path: str | os.PathLike, task: str) -> list[dict[str, Any]]:
    """Rows ``{"text_a", "text_b", "label"}`` of a GLUE TSV file (quoting off, BOM removed); raises on a missing
    column or an unknown label value, and on an empty file, naming the file and line (``DataFileError``)."""
    spec = TASKS[task]
    with utf8_lines(path), open(path, encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not any(fields and fields != [""] for fields in lines):
        raise DataFileError(
            f"{path} is empty: a GLUE {task!r} TSV file holds "
            + ("a header line and " if spec.header else "")
            + "one tab-separated row per example, as GLUE publishes it; copy the complete file "
            "again (or remove it and point data.data_dir at a complete GLUE folder)"
        )
    if spec.header:
        header, lines, first = lines[0], lines[1:], 2

        def index(col: str | int) -> int:
            if col not in header:
                raise DataFileError(f"{path}: column {col!r} missing for GLUE task {task!r}; the header has {header}")
            return header.index(col)
    else:
        first = 1

        def index(col: str | int) -> int:
            return int(col)

    text_idx = [index(c) for c in spec.local_text]
    label_idx = index(spec.local_label)
    rows = []
    for n, fields in enumerate(lines, start=first):
        if not fields or fields == [""]:
            continue
        if max(text_idx + [label_idx]) >= len(fields):
            raise DataFileError(f"{path}:{n}: {len(fields)} fields, too few for GLUE task {task!r}")
        raw = fields[label_idx].strip()
        rows.append(
            {
                "text_a": fields[text_idx[0]],
                "text_b": fields[text_idx[1]] if len(text_idx) > 1 else None,
                "label": _label(raw, spec, f"{path}:{n}"),
            }
        )
    return rows


def _label(raw: Any, spec: GlueTask, where: str) -> float | int:
    if spec.labels is None:
        try:
            return float(raw)
        except ValueError:
            raise DataFileError(f"{where}: regression label {raw!r} is not a number") from None
    value = str(raw)
    if value not in spec.labels:
        raise DataFileError(
            f"{where}: unknown label {raw!r} for GLUE task {spec.hub_config!r}; known: {list(spec.labels)}"
        )
    return spec.labels.index(value)


class GLUEDataModule(BaseDataModule):
    """One GLUE task (``task`` in cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte).

    Args:
        task: the GLUE task, lower-case.
        data_dir: a local GLUE directory (``<data_dir>/<TASK>/train.tsv`` ...); ``None`` loads ``hub_name``.
        hub_name: the Hub dataset (``nyu-mll/glue``).
        train_file: file name of the training split in the task folder (local only).
        val_from_train: hold out this fraction of the training rows as the validation split (seeded), for
            folders without a dev file or to keep the dev set for the end.
        max_train_samples / max_eval_samples: use only the first N rows (quick runs).
        overlength: ``"truncate"`` (the tokenizer's ``longest_first``) or ``"drop"`` pairs over ``max_length``;
            either way they are counted in ``stats``.
    """

    def __init__(
        self,
        task: str = "rte",
        data_dir: str | None = None,
        hub_name: str = "nyu-mll/glue",
        train_file: str = "train.tsv",
        val_from_train: float | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        overlength: Literal["truncate", "drop"] = "truncate",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(f"data.task={task!r} is not a GLUE task; choose one of {sorted(TASKS)}")
        if overlength not in ("truncate", "drop"):
            raise ValueError(f"data.overlength={overlength!r}: choose 'truncate' or 'drop'")
        if val_from_train is not None and not 0.0 < val_from_train < 1.0:
            raise ValueError(f"data.val_from_train={val_from_train} must be in (0, 1)")
        self.glue_task = task
        self.spec = TASKS[task]
        self.data_dir, self.hub_name, self.train_file = data_dir, hub_name, train_file
        self.val_from_train = val_from_train
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.overlength = overlength
        self.stats: dict[str, int] = {"truncated": 0, "dropped": 0}
        self.task = "regression" if self.spec.labels is None else "classification"
        self.num_labels = 1 if self.spec.labels is None else len(self.spec.labels)
        self.val_sets: list[Any] = []

    # ------------------------------------------------------------------ loading
    def _raw_splits(self, with_train: bool = True) -> tuple[Any, list[Any]]:
        """(train, [validation...]) as ``datasets.Dataset`` of ``{"text_a", "text_b", "label"}`` rows; with
        ``with_train=False`` (evaluation only) train is None and the training file is not read, unless the
        validation split is held out of it (``val_from_train``)."""
        import datasets

        with_train = with_train or bool(self.val_from_train)

        if self.data_dir is not None:
            folder = Path(self.data_dir) / self.spec.folder
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"data.data_dir: {folder} does not exist (expected <data_dir>/{self.spec.folder})"
                )

            def load(name: str, split: str) -> Any:
                path = folder / name
                if not path.is_file():
                    raise FileNotFoundError(f"GLUE {self.glue_task}: {path} does not exist")
                stat = path.stat()  # in the cache key, so that an edited file is read again
                label = datasets.Value("float32" if self.spec.labels is None else "int64")
                features = datasets.Features(
                    {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label}
                )
                try:
                    with data_errors(f"GLUE {self.glue_task} {split} file", [path]):  # the bad row's message last
                        return datasets.Dataset.from_generator(
                            _generate,
                            features=features,
                            gen_kwargs={
                                "path": str(path),
                                "task": self.glue_task,
                                "stamp": f"{stat.st_size}-{stat.st_mtime_ns}",
                            },
                        )
                except DataFileError:
                    raise
                except ValueError as err:
                    if "corresponds to no data" in str(err):
                        raise ValueError(
                            f"GLUE {self.glue_task}: the {split} split is empty ({path} has no rows)"
                        ) from None
                    raise

            train = load(self.train_file, "train") if with_train else None
            vals = [] if self.val_from_train else [load(f, "validation") for f in self.spec.val_files]
        else:
            wanted = (["train"] if with_train else []) + ([] if self.val_from_train else list(self.spec.val_hub))
            hub = load_hub_splits(self.hub_name, self.spec.hub_config, wanted)
            columns = dict(zip(("text_a", "text_b"), self.spec.hub_text))

            def convert(split: Any) -> Any:
                missing = [c for c in (*self.spec.hub_text, "label") if c not in split.column_names]
                if missing:
                    raise ValueError(f"{self.hub_name}/{self.spec.hub_config}: columns {missing} missing")
                return split.map(
                    lambda row: {
                        "text_a": row[columns["text_a"]],
                        "text_b": row[columns["text_b"]] if "text_b" in columns else None,
                        "label": self._hub_label(row["label"]),
                    },
                    remove_columns=split.column_names,
                )

            train = convert(hub["train"]) if with_train else None
            vals = [] if self.val_from_train else [convert(hub[s]) for s in self.spec.val_hub]
        if self.val_from_train:
            assert train is not None  # val_from_train needs the train split, loaded above
            parts = train.train_test_split(test_size=self.val_from_train, seed=self.seed)
            train, vals = parts["train"], [parts["test"]]
        if self.max_train_samples is not None and train is not None:
            train = train.select(range(min(self.max_train_samples, len(train))))
        if self.max_eval_samples is not None:
            vals = [v.select(range(min(self.max_eval_samples, len(v)))) for v in vals]
        return train, vals

    def _hub_label(self, label: Any) -> float | int:
        if self.spec.labels is None:
            return float(label)
        if not 0 <= int(label) < len(self.spec.labels):  # the Hub's test splits carry -1
            raise ValueError(
                f"{self.hub_name}/{self.spec.hub_config}: label {label} outside 0..{len(self.spec.labels) - 1}"
            )
        return int(label)

    def _tokenize(self, data: Any, split: str) -> Any:
        tok, limit, single = self.tokenizer, self.max_length, len(self.spec.hub_text) == 1

        def encode(batch: dict[str, list]) -> dict[str, list]:  # no reference to self: datasets hashes it
            pairs = (batch["text_a"],) if single else (batch["text_a"], batch["text_b"])
            full = tok(*pairs)["input_ids"]
            enc = tok(*pairs, truncation=True, max_length=limit)
            enc["labels"] = batch["label"]
            enc["overlong"] = [len(ids) > limit for ids in full]
            return dict(enc)

        data = data.map(encode, batched=True, remove_columns=data.column_names, desc=f"tokenize {split}")
        over = sum(data["overlong"])
        if over:
            key = "dropped" if self.overlength == "drop" else "truncated"
            self.stats[key] += over
            if self.overlength == "drop":
                data = data.filter(lambda row: not row["overlong"])
        return self._check(data.remove_columns("overlong"), split)

    def setup(self, stage: str | None = None) -> None:
        # validate / test / predict need only the validation split(s): the training file is neither read nor
        # tokenised (a folder holding only dev.tsv is enough), unless the validation rows come out of it
        need_train = stage in (None, "fit")
        if self.val_sets and (self.train_set is not None or not need_train):
            return
        train, vals = self._raw_splits(with_train=need_train and self.train_set is None)
        if need_train and self.train_set is None:
            self.train_set = self._tokenize(train, "train")
        if not self.val_sets:
            self.val_sets = [self._tokenize(v, f"validation {i}") for i, v in enumerate(vals)]
            self.val_set = self.val_sets[0]

    # ------------------------------------------------------------------ loaders and metrics
    def val_dataloader(self) -> Any:
        loaders = [self._loader(v, "validation", train=False) for v in self.val_sets]
        return loaders if len(loaders) > 1 else loaders[0]

    def test_dataloader(self) -> Any:
        return self.val_dataloader()

    def eval_names(self, stage: str) -> list[str] | None:
        """Suffixes of the evaluation dataloaders (MNLI: matched, mismatched)."""
        return list(self.spec.val_names) if self.spec.val_names and not self.val_from_train else None

    def build_metrics(self, stage: str) -> dict[str, Any]:
        from kasa_lightning.metrics.standard import standard_metrics

        return standard_metrics(self.spec.metrics, self.num_labels)


def load_hub_splits(name: str, config: str, splits: list[str]) -> dict[str, Any]:
    """The named splits of the Hub dataset ``name`` (configuration ``config``), downloading only their files.

    ``datasets.load_dataset(name, config)`` downloads and prepares every split of the configuration, whatever
    ``split=`` asks for (GLUE's QQP and MNLI training files are hundreds of MB that ``validate`` does not need).
    The dataset's own split-to-files map (its Hub metadata, read by ``load_dataset_builder`` without downloading
    data) gives the files of the wanted splits, and only those are passed as ``data_files``. A dataset without
    such a map is loaded whole. A local folder laid out like a Hub dataset (parquet files and a README declaring
    the configurations) works the same way.
    """
    import datasets

    files = datasets.load_dataset_builder(name, config).config.data_files
    if files is not None and all(split in files for split in splits):
        loaded = datasets.load_dataset(name, config, data_files={split: files[split] for split in splits})
    else:
        loaded = datasets.load_dataset(name, config)
    missing = [split for split in splits if split not in loaded]
    if missing:
        raise ValueError(f"{name}/{config} has no split {missing} (it has {sorted(loaded)}): check data.hub_name")
    return {split: loaded[split] for split in splits}


def _generate(path: str, task: str, stamp: str) -> Any:
    del stamp
    yield from read_glue_tsv(path, task)
