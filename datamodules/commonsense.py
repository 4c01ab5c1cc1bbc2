"""``CommonsenseDataModule``: Commonsense170K training and the eight commonsense test sets (LLM-Adapters recipe).

Data
    * Training rows ``{instruction, input, output, answer}`` from ``train_path``: a Hub dataset name (default
      ``zwhe99/commonsense_170k``, its ``train`` split) or a local JSON / JSON-lines file, or a local directory
      holding ``train.json`` or ``<name>/train.json`` files (all of them are concatenated).
    * Test rows of the same form from ``test_dir``: a local directory laid out as LLM-Adapters' ``dataset/`` folder
      (``<name>/test.json``), or a Hub dataset repository with the same layout (loaded with
      ``load_dataset(repo, data_files="<name>/test.json")``).

    Both are read with the ``datasets`` library and tokenised with ``Dataset.map``; after loading, local and Hub
    data take exactly the same code path. The map results are cached by ``datasets`` under a fingerprint made of
    the source data, the tokenizer, ``max_length``, ``overlength`` and ``max_new_tokens``.

Splits
    * train: the prompt (``commonsense_prompt(instruction, input)``) is masked in the labels, the target is
      ``output`` + EOS (``CausalLMDataModule.encode_pair``). Rows whose ``output`` is missing, null or blank are
      skipped, counted in ``stats["no_output"]`` and warned about; a test row without an ``answer`` is an error.
      A file that is empty or not valid JSON raises ``DataFileError`` naming the file and line.
    * val: ``val_size`` rows held out of the training data with ``seed`` (``Dataset.train_test_split``, as
      LLM-Adapters' ``val_set_size``; LLM-Adapters uses seed 42, set ``data.seed`` for the same split). By default
      they are scored by teacher-forced loss, as LLM-Adapters' Trainer does (``val/loss``, ``val/perplexity``;
      cheap, and the quantity it selects the best checkpoint on). ``val_generate=True`` instead generates
      answers and logs ``val/accuracy``; the extraction rule then follows the form of the gold answer
      (``true``/``false``, ``solutionN``, ``answerN``, ``endingN``, ``optionN``).
    * test: one dataloader per test set, in ``test_sets`` order. ``eval_names("test")`` gives the set names, so the
      module logs ``test/accuracy_<name>`` and, for several sets, ``test/accuracy_average``. Targets are
      ``{"dataset", "answer"}``; meta ``{"index", "dataset", "instruction", "answer"}``.
    * predict: the same dataloaders; ``format_prediction`` adds ``output``, the extracted ``prediction`` and
      ``correct`` (LLM-Adapters' ``output_pred`` / ``pred`` / ``flag``).

Results file
    A DataModule gets no ``on_test_epoch_end``, so with ``results_path`` set the accuracies are written in
    ``teardown("test")``, which the Trainer calls after a successful ``test`` run (not after a failed one), once
    the module has logged them: ``{"accuracy": {name: acc}, "average": mean, "examples": {name: n}, ...}``,
    fractions in [0, 1], on global rank 0 only.

    Under DDP, Lightning's ``DistributedSampler`` repeats up to ``world_size - 1`` rows of each test set to even
    the shards, so those rows count twice; test on one device for the exact LLM-Adapters numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from kasa_lightning.datamodules.causal import CausalLMDataModule
from kasa_lightning.datamodules.errors import DataFileError, data_errors
from kasa_lightning.hub import is_local_path
from kasa_lightning.metrics.commonsense import (
    COMMONSENSE_DATASETS,
    CommonsenseAccuracy,
    commonsense_prompt,
    extract_answer,
)

DEFAULT_GENERATION: dict[str, Any] = {"num_beams": 4, "max_new_tokens": 32}
_TRAIN_COLUMNS = ("instruction", "output")
_TEST_COLUMNS = ("instruction", "answer")
# Which extraction rule reads an answer of a given form (the answerN sets share one rule).
_RULE_BY_PREFIX = (
    ("true", "boolq"),
    ("false", "boolq"),
    ("solution", "piqa"),
    ("answer", "ARC-Easy"),
    ("ending", "hellaswag"),
    ("option", "winogrande"),
)


def rule_for_answer(answer: str) -> str:
    """A dataset name whose extraction rule covers a gold ``answer`` (for rows that do not name their set)."""
    for prefix, name in _RULE_BY_PREFIX:
        if answer.startswith(prefix):
            return name
    raise ValueError(
        f"cannot tell the answer format of {answer!r} (expected true/false, solutionN, answerN, endingN or optionN)"
    )


class CommonsenseDataModule(CausalLMDataModule):
    """Commonsense170K fine-tuning and per-set generation accuracy (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande,
    ARC-e, ARC-c, OBQA).

    Args:
        train_path: Hub dataset name, or a local ``.json``/``.jsonl`` file or directory (see module docstring).
        test_dir: local directory or Hub dataset repository with ``<name>/test.json``; needed for test/predict.
        test_sets: test sets to evaluate (default: all eight), one dataloader each.
        val_size: rows held out of the training data for validation (0: no validation).
        val_generate: score validation by generation accuracy instead of teacher-forced loss.
        max_test_examples: evaluate only the first ``n`` rows of every test set (quick runs).
        results_path: JSON file for the per-set accuracies and their average, written after ``test``.
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).
        max_length: token budget of prompt + target (LLM-Adapters' ``cutoff_len`` 256).
        overlength: ``"truncate"`` (the prompt loses its start) or ``"drop"``; counted in ``stats``.
        generation: ``generate`` settings, merged over the defaults ``num_beams=4, max_new_tokens=32``.
        **kwargs: ``tokenizer``, ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``
            (``BaseDataModule``).
    """

    ENCODING_VERSION = 2  # bump when the encoding changes (cached map results are then not reused)

    def __init__(
        self,
        train_path: str = "zwhe99/commonsense_170k",
        test_dir: str | None = None,
        test_sets: list[str] | None = None,
        val_size: int = 120,
        val_generate: bool = False,
        max_test_examples: int | None = None,
        results_path: str | None = None,
        cache_dir: str | None = None,
        max_length: int = 256,
        overlength: Literal["truncate", "drop"] = "truncate",
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            overlength=overlength,
            generation={**DEFAULT_GENERATION, **(generation or {})},
            max_length=max_length,
            **kwargs,
        )
        test_sets = list(COMMONSENSE_DATASETS) if test_sets is None else list(test_sets)
        unknown = [name for name in test_sets if name not in COMMONSENSE_DATASETS]
        if unknown:
            raise ValueError(f"data.test_sets: unknown test set(s) {unknown}; choose from {list(COMMONSENSE_DATASETS)}")
        if not test_sets:
            raise ValueError(f"data.test_sets is empty; choose from {list(COMMONSENSE_DATASETS)}")
        if len(set(test_sets)) != len(test_sets):
            raise ValueError(f"data.test_sets={test_sets} names a set twice")
        if val_size < 0:
            raise ValueError(f"data.val_size={val_size} must be >= 0")
        if max_test_examples is not None and max_test_examples < 1:
            raise ValueError(f"data.max_test_examples={max_test_examples} must be >= 1 (or null for all)")
        self.train_path = train_path
        self.test_dir = test_dir
        self.test_sets = test_sets
        self.val_size = val_size
        self.val_generate = val_generate
        self.max_test_examples = max_test_examples
        self.results_path = results_path
        self.cache_dir = cache_dir
        self.test_data: dict[str, Any] | None = None  # name -> tokenised Dataset
        self.split_stats: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ loading
    def _load_json(self, files: list[str], setting: str = "data.train_path") -> Any:
        from datasets import load_dataset

        try:
            with data_errors(setting, files):  # a parse error names the file and line
                return load_dataset("json", data_files=files, split="train", cache_dir=self.cache_dir)
        except DataFileError:
            raise
        except ValueError as err:  # e.g. an empty list: 'Instruction "train" corresponds to no data!'
            raise ValueError(
                f"CommonsenseDataModule: no rows in {files} (empty or not a JSON list / JSON lines of objects): {err}"
            ) from err

    def load_train(self) -> Any:
        """The raw training rows as a ``datasets.Dataset`` (before the validation split)."""
        path = self.train_path
        local = os.path.expanduser(path)
        if os.path.isfile(local):
            return self._load_json([local])
        if os.path.isdir(local):
            for pattern in ("train.json", "train.jsonl", "*/train.json", "*/train.jsonl"):
                files = sorted(str(p) for p in Path(local).glob(pattern))
                if files:
                    return self._load_json(files)
            raise FileNotFoundError(f"data.train_path={path!r}: no train.json or <name>/train.json in this directory")
        if is_local_path(path):
            raise FileNotFoundError(
                f"data.train_path={path!r} does not exist (give a Hub dataset name or a local JSON file / directory)"
            )
        from datasets import load_dataset

        try:
            data = load_dataset(path, cache_dir=self.cache_dir)
        except Exception as err:  # datasets raises many types (offline, not found, no access)
            raise FileNotFoundError(
                f"data.train_path={path!r}: not a local path, and the Hub dataset could not be "
                f"loaded: {type(err).__name__}: {err}"
            ) from err
        if "train" not in data:
            raise ValueError(f"data.train_path={path!r}: the Hub dataset has no 'train' split ({list(data)})")
        return data["train"]

    def load_test(self, name: str) -> Any:
        """The raw rows of test set ``name`` as a ``datasets.Dataset``."""
        if self.test_dir is None:
            raise ValueError(
                "data.test_dir is not set: give a directory (or Hub dataset repository) with "
                "<name>/test.json files, as in LLM-Adapters' dataset/ folder"
            )
        local = os.path.expanduser(self.test_dir)
        if os.path.isdir(local):
            file = Path(local) / name / "test.json"
            if not file.is_file():
                have = sorted(p.parent.name for p in Path(local).glob("*/test.json"))
                raise FileNotFoundError(
                    f"test set {name!r}: {file} does not exist; {local} has {have}; "
                    "set data.test_sets to the sets you have"
                )
            return self._load_json([str(file)], "data.test_dir")
        if is_local_path(self.test_dir):
            raise FileNotFoundError(f"data.test_dir={self.test_dir!r} is not an existing directory")
        from datasets import load_dataset

        try:
            return load_dataset(self.test_dir, data_files=f"{name}/test.json", split="train", cache_dir=self.cache_dir)
        except Exception as err:
            raise FileNotFoundError(
                f"test set {name!r}: could not load {name}/test.json from the Hub dataset "
                f"{self.test_dir!r}: {type(err).__name__}: {err}"
            ) from err

    @staticmethod
    def _require(data: Any, columns: tuple[str, ...], what: str) -> None:
        if len(data) == 0:
            raise ValueError(f"CommonsenseDataModule: the {what} data is empty")
        missing = [c for c in columns if c not in data.column_names]
        if missing:
            raise ValueError(
                f"CommonsenseDataModule: the {what} data lacks column(s) {missing}; it has "
                f"{data.column_names} (expected instruction, input, output, answer)"
            )

    # ------------------------------------------------------------------ tokenising
    def _encode(self, data: Any, split: str, generate: bool, dataset: str | None = None) -> Any:
        """Tokenise ``data`` with ``Dataset.map``: training rows (``generate=False``) or prompts with targets.

        Training rows without an ``output`` (missing, null or blank) are skipped, counted in ``stats["no_output"]``
        and logged; an evaluation row without an ``answer`` is an error naming the split and row."""
        columns = data.column_names
        no_output = [] if generate else [i for i, out in enumerate(data["output"]) if not _text(out)]
        if no_output:
            rank_zero_warn(
                f"CommonsenseDataModule {split} split: skipped {len(no_output)} row(s) without an "
                f"output (nothing to learn): rows {no_output[:10]}{' ...' if len(no_output) > 10 else ''}"
            )

        def rows(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "_truncated": []}
            if generate:
                out.update(targets=[], meta=[])
            else:
                out["labels"] = []
            inputs = batch.get("input") or [""] * len(indices)
            for i, index in enumerate(indices):
                prompt = commonsense_prompt(batch["instruction"][i], inputs[i] or "")
                before = self.stats["truncated"]
                if generate:
                    if not _text(batch["answer"][i]):
                        raise DataFileError(
                            f"CommonsenseDataModule {split} split, row {index}: no answer (the "
                            "gold answer is missing or empty); fix or remove the row"
                        )
                    enc = self.encode_prompt(prompt)
                    answer = str(batch["answer"][i])
                    name = dataset or rule_for_answer(answer)
                    out["targets"].append({"dataset": name, "answer": answer})
                    out["meta"].append(
                        {"index": index, "dataset": name, "instruction": batch["instruction"][i], "answer": answer}
                    )
                else:
                    if not _text(batch["output"][i]):
                        continue  # no output: counted above
                    pair = self.encode_pair(prompt, batch["output"][i])
                    if pair is None:  # dropped (overlength="drop")
                        continue
                    enc = pair
                    out["labels"].append(enc["labels"])
                out["input_ids"].append(enc["input_ids"])
                out["attention_mask"].append(enc["attention_mask"])
                out["_truncated"].append(self.stats["truncated"] > before)
            return out

        encoded = data.map(
            rows,
            batched=True,
            with_indices=True,
            remove_columns=columns,
            new_fingerprint=self.map_fingerprint(
                data, int(self.generation_kwargs.get("max_new_tokens", 0)), split, generate, dataset
            ),
            desc=f"Tokenising commonsense {split}",
        )
        if len(encoded) == 0:
            if len(no_output) == len(data):
                raise ValueError(f"CommonsenseDataModule: no row of the {split} split has an output")
            raise ValueError(
                f"CommonsenseDataModule: every row of the {split} split was dropped as longer than "
                f"max_length={self.max_length}; raise data.max_length or use overlength='truncate'"
            )
        self.split_stats[split] = {
            "rows": len(data),
            "truncated": int(sum(encoded["_truncated"])),
            "dropped": len(data) - len(no_output) - len(encoded),
            "no_output": len(no_output),
        }
        self.stats = {
            key: sum(s.get(key, 0) for s in self.split_stats.values()) for key in ("truncated", "dropped", "no_output")
        }
        return encoded.remove_columns("_truncated")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            raw = self.load_train()
            needed = _TRAIN_COLUMNS + (("answer",) if self.val_generate else ())
            self._require(raw, needed, f"training ({self.train_path})")
            if self.val_size >= len(raw):
                raise ValueError(f"data.val_size={self.val_size} leaves no training rows ({len(raw)} in total)")
            if self.val_size > 0:
                parts = raw.train_test_split(test_size=self.val_size, shuffle=True, seed=self.seed)
                raw, raw_val = parts["train"], parts["test"]
                self.val_set = self._encode(raw_val, "val", generate=self.val_generate)
            self.train_set = self._encode(raw, "train", generate=False)
        if stage in (None, "test", "predict") and self.test_data is None:
            data = {}
            for name in self.test_sets:
                raw = self.load_test(name)
                self._require(raw, _TEST_COLUMNS, f"test set {name!r}")
                if self.max_test_examples is not None:
                    raw = raw.select(range(min(self.max_test_examples, len(raw))))
                data[name] = self._encode(raw, f"test/{name}", generate=True, dataset=name)
            self.test_data = data

    def val_dataloader(self) -> Any:
        if self.val_size == 0:
            return []  # Lightning skips validation
        return self._loader(self.val_set, "validation", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        if self.test_data is None:
            raise RuntimeError("CommonsenseDataModule.setup('test') has not run")
        return [self._loader(self.test_data[name], f"test ({name})", train=False) for name in self.test_sets]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()

    def eval_names(self, stage: str) -> list[str] | None:
        """Suffixes of the evaluation dataloaders: the test set names for test/predict, none for val."""
        return list(self.test_sets) if stage in ("test", "predict") else None

    def build_metrics(self, stage: str) -> dict[str, Any]:
        if stage == "val" and not self.val_generate:
            return {}  # validation is teacher-forced loss: the module logs val/loss and val/perplexity
        return {"accuracy": CommonsenseAccuracy()}

    def format_prediction(self, meta: dict[str, Any], text: str) -> dict[str, Any]:
        prediction = extract_answer(meta["dataset"], text)
        return {**meta, "output": text, "prediction": prediction, "correct": prediction == meta.get("answer")}

    def results(self) -> dict[str, Any] | None:
        """Per-set test accuracies and their average from the trainer's logged metrics (None if none logged)."""
        if self.trainer is None:
            return None
        logged = self.trainer.callback_metrics
        accuracy = {
            name: float(logged[f"test/accuracy_{name}"]) for name in self.test_sets if f"test/accuracy_{name}" in logged
        }
        if not accuracy:
            return None
        return {
            "accuracy": accuracy,
            "average": sum(accuracy.values()) / len(accuracy),
            "examples": {name: len(self.test_data[name]) for name in accuracy} if self.test_data else {},
            "test_sets": list(self.test_sets),
            "max_test_examples": self.max_test_examples,
            "generation": dict(self.generation_kwargs),
            "ckpt_path": getattr(self.trainer, "ckpt_path", None),
        }

    def teardown(self, stage: str) -> None:
        """After ``test``: write ``results_path`` (a DataModule has no ``on_test_epoch_end``; the Trainer calls
        ``teardown`` once the run has finished and ``callback_metrics`` holds the logged accuracies)."""
        if stage != "test" or not self.results_path or self.trainer is None or not self.trainer.is_global_zero:
            return
        results = self.results()
        if results is None:
            rank_zero_warn(
                f"CommonsenseDataModule: no test/accuracy_<name> was logged; {self.results_path} not written"
            )
            return
        path = Path(self.results_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


def _text(value: Any) -> bool:
    """Whether a field holds text (not missing, null or blank)."""
    return value is not None and bool(str(value).strip())
