"""``E2EDataModule``: E2E NLG (restaurant meaning representations -> text) for causal language models.

Sources: the official csv files (``trainset.csv``, ``devset.csv``, ``testset_w_refs.csv`` with columns ``mr``,
``ref``; one row per reference, so an MR appears several times), or the Hub (``GEM/e2e_nlg`` with
``meaning_representation`` + ``target``/``references``, ``tuetschek/e2e_nlg`` with ``meaning_representation`` +
``human_reference``). After loading, both are the same (mr, ref) rows. The csv files are read strictly (a row with
another number of fields than the header, or an unclosed quote, is a ``DataFileError`` naming the file and line);
rows with an empty reference are skipped, counted in ``stats["empty_reference"]`` / ``split_stats`` and logged.

Training sequence: ``<mr><separator><text><eos>`` with the loss on the text only, tokenised through
``datasets.map`` (cached). Evaluation and prediction:
one generation per DISTINCT MR, scored against all of its references with the official script's five metrics
(``kasa_lightning.metrics.e2e``). Decoding defaults are the paper's GPT-2 medium values (beam 10, length
penalty 0.9, no-repeat n-gram size 4, 64 new tokens); ``generation`` overrides them.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from typing import Any, cast

from kasa_lightning.datamodules.causal import CausalLMDataModule
from kasa_lightning.datamodules.errors import DataFileError, utf8_lines
from kasa_lightning.hub import is_local_path

log = logging.getLogger(__name__)

_MR_COLUMNS = ("mr", "MR", "meaning_representation")
_REF_COLUMNS = ("ref", "human_reference", "target")
PAPER_GENERATION = {"num_beams": 10, "length_penalty": 0.9, "no_repeat_ngram_size": 4, "max_new_tokens": 64}


class E2EDataModule(CausalLMDataModule):
    """E2E NLG.

    Args:
        train_path / val_path / test_path: a csv file, or a Hub dataset name (then ``*_split`` names the split).
        separator: between the MR and the text (the prompt ends with it).
        max_eval_mrs: evaluate only the first N distinct MRs (quick runs).
        metrics: which of BLEU, NIST, METEOR, ROUGE_L, CIDEr to compute (METEOR needs Java).
        generation: ``generate`` settings over the paper's defaults (``PAPER_GENERATION``).
    """

    def __init__(
        self,
        train_path: str = "GEM/e2e_nlg",
        val_path: str | None = "GEM/e2e_nlg",
        test_path: str | None = "GEM/e2e_nlg",
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        separator: str = " ||",
        max_eval_mrs: int | None = None,
        metrics: tuple[str, ...] = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"),
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(generation={**PAPER_GENERATION, **(generation or {})}, **kwargs)
        self.paths = {"train": (train_path, train_split), "val": (val_path, val_split), "test": (test_path, test_split)}
        self.separator = separator
        self.max_eval_mrs = max_eval_mrs
        self.metric_names = tuple(metrics)
        self.split_stats: dict[str, dict[str, int]] = {}
        self.stats["empty_reference"] = 0

    # ------------------------------------------------------------------ loading
    def load_pairs(self, split: str) -> list[tuple[str, str]]:
        """(mr, ref) pairs of a split, whatever the source.

        Rows with an empty reference are skipped, counted in ``split_stats[split]["empty_reference"]`` and
        ``stats["empty_reference"]``, and logged as a warning with their line numbers (row indices for the Hub).
        """
        path, hub_split = self.paths[split]
        if path is None:
            raise ValueError(f"data.{split}_path is not set: give an E2E csv file or a Hub dataset name")
        rows: Iterable[tuple[int, Any]]
        if os.path.exists(path):
            columns, rows = read_e2e_csv(path)
        elif is_local_path(path):
            raise FileNotFoundError(
                f"data.{split}_path={path!r} does not exist (give an E2E csv file or a Hub "
                "dataset name such as 'GEM/e2e_nlg')"
            )
        else:
            import datasets

            data = datasets.load_dataset(path, split=hub_split)
            columns, rows = list(data.column_names), enumerate(data)
        mr_col = next((c for c in _MR_COLUMNS if c in columns), None)
        ref_col = next((c for c in _REF_COLUMNS if c in columns), None)
        if mr_col is None:
            raise ValueError(f"E2E {split} data {path!r} has no MR column (one of {_MR_COLUMNS}): {columns}")
        if ref_col is None and "references" not in columns:
            raise ValueError(
                f"E2E {split} data {path!r} has no reference column (one of {_REF_COLUMNS} or 'references'): "
                f"{columns}; for MR-only files (testset.csv) use predict"
            )
        pairs: list[tuple[str, str]] = []
        empty: list[int] = []  # line numbers (csv) or row indices (Hub) of the empty references
        mrs: dict[str, None] = {}
        # GEM rows carry one `target` and, for evaluation, the MR's full `references` list: use the list there
        use_list = "references" in columns and (ref_col is None or split != "train")
        for where, row in rows:
            refs = (row["references"] or []) if use_list else [row[cast(str, ref_col)]]  # one of the two exists
            if row[mr_col] is None or not str(row[mr_col]).strip():
                raise DataFileError(
                    f"{path}:{where}: the MR is empty"
                    if os.path.exists(path)
                    else f"E2E {split} data {path!r}, row {where}: the MR is empty"
                )
            mrs[row[mr_col]] = None
            for ref in refs:
                if ref is None or not str(ref).strip():
                    empty.append(where)
                else:
                    pairs.append((row[mr_col], ref))
        if not pairs:
            raise ValueError(
                f"E2E {split} data {path!r} is empty" + (f" (all {len(empty)} references are empty)" if empty else "")
            )
        lost = len(mrs) - len({mr for mr, _ in pairs})  # MRs left without any reference
        self.split_stats[split] = {
            "rows": len(pairs) + len(empty),
            "empty_reference": len(empty),
            "mr_without_reference": lost,
        }
        self.stats["empty_reference"] = sum(s["empty_reference"] for s in self.split_stats.values())
        if empty:
            unit = "line" if os.path.exists(path) else "row"
            log.warning(
                "E2E %s split (%s): skipped %d reference(s) that are empty: %s(s) %s%s%s",
                split,
                path,
                len(empty),
                unit,
                empty[:10],
                " ..." if len(empty) > 10 else "",
                f"; {lost} MR(s) have no reference left and are not used" if lost else "",
            )
        return pairs

    def prompt(self, mr: str) -> str:
        return f"{mr}{self.separator}"

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.val_set is not None:
            return
        if stage in (None, "fit"):
            self.train_set = self._check(self._encode_train(self.load_pairs("train")), "train")
        for split in ("val", "test"):
            if self.paths[split][0] is not None and (stage in (None, "fit", "validate") or split == "test"):
                setattr(self, f"{split}_set", self._eval_rows(self.load_pairs(split)))
        self.predict_set = self.test_set

    def _encode_train(self, pairs: list[tuple[str, str]]) -> Any:
        """Tokenise the training pairs with ``datasets.map`` (cached by the data, the tokenizer and the length
        settings); over-long pairs are truncated or dropped and counted in ``stats`` (also on a cache hit)."""
        import datasets

        data = datasets.Dataset.from_dict(
            {"prompt": [self.prompt(mr) for mr, _ in pairs], "target": [" " + ref for _, ref in pairs]}
        )

        def rows(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": [], "_truncated": []}
            for prompt, target in zip(batch["prompt"], batch["target"]):
                before = self.stats["truncated"]
                enc = self.encode_pair(prompt, target)
                if enc is None:  # dropped
                    continue
                for key in ("input_ids", "attention_mask", "labels"):
                    out[key].append(enc[key])
                out["_truncated"].append(self.stats["truncated"] > before)
            return out

        encoded = data.map(
            rows,
            batched=True,
            remove_columns=data.column_names,
            new_fingerprint=self.map_fingerprint(data, "train"),
            desc="Tokenising E2E train",
        )
        self.stats["dropped"] = len(data) - len(encoded)
        self.stats["truncated"] = int(sum(encoded["_truncated"]))
        return encoded.remove_columns("_truncated")

    def _eval_rows(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """One row per distinct MR (first-seen order) with all of its references."""
        grouped: dict[str, list[str]] = {}
        for mr, ref in pairs:
            grouped.setdefault(mr, []).append(ref)
        items = list(grouped.items())[: self.max_eval_mrs]
        return [
            {**self.encode_prompt(self.prompt(mr)), "targets": refs, "meta": {"index": i, "mr": mr}}
            for i, (mr, refs) in enumerate(items)
        ]

    def build_metrics(self, stage: str) -> dict[str, Any]:
        from kasa_lightning.metrics.e2e import E2EMetric

        return {"e2e": E2EMetric(metrics=self.metric_names)}

    def format_prediction(self, meta: dict[str, Any], text: str) -> dict[str, Any]:
        return {"index": meta.get("index"), "mr": meta.get("mr"), "output": text.strip()}


def read_e2e_csv(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row)]) of an E2E csv file (``mr,ref`` with quoting, as the official files).

    Read with Python's ``csv`` module in strict mode rather than ``datasets``' csv builder (pandas), which, when the
    first row has more fields than the header, silently makes the leading fields an index and keeps the last two
    as ``mr, ref``, lets an unclosed quote swallow the following rows, and buries its other parse errors under a
    ``DatasetGenerationError``; here each raises ``DataFileError`` with the file and line. Blank lines are skipped.
    """
    with utf8_lines(path), open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)
        header: list[str] | None = None
        rows: list[tuple[int, dict[str, str]]] = []
        start = 1
        try:
            for fields in reader:
                line, start = start, reader.line_num + 1  # a quoted field may span lines: report where it began
                if not fields:
                    continue
                if header is None:
                    header = fields
                elif len(fields) != len(header):
                    raise DataFileError(
                        f"{path}:{line}: {len(fields)} fields, but the header {header} has "
                        f'{len(header)}; quote fields that contain commas ("name[A], food[B]")'
                    )
                else:
                    rows.append((line, dict(zip(header, fields))))
        except csv.Error as err:
            raise DataFileError(f"{path}:{start}: not valid CSV ({err}); check the quotes on this line") from None
    if header is None:
        raise DataFileError(
            f"{path} is empty: an E2E csv file holds a header line (mr,ref) and one row per "
            "(MR, reference); copy the complete file again"
        )
    return header, rows
