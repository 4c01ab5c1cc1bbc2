"""Strict readers of labelled text tables: CSV, TSV, JSON lines, JSON and Parquet files, and Hub datasets.

Each reader returns ``(where, row)`` pairs: ``row`` holds the requested columns, ``where`` says where the row is
(``file:line`` for text files, ``file: row N`` for Parquet and JSON lists, ``name [split] row N`` for the Hub), so
that every later check names the line to fix. A missing column, a row with the wrong number of fields, a line that
is not JSON or an empty file is a :class:`DataFileError` naming the file and line.

CSV and TSV files are read with Python's ``csv`` module (a header line, then one row per record; fields may be
quoted as spreadsheets and pandas write them, so a text can hold the delimiter, quotes or line breaks; a byte-order
mark is removed). Hand-written rather than ``datasets``' CSV builder: pandas reports a bad row by the line of its
own parser, after guessing types, and fills a missing field with NaN instead of refusing it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from kasa_lightning.datamodules.errors import DataFileError

Record = tuple[str, dict[str, Any]]  # (where, {column: value})

#: file suffix -> format
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def read_table(path: str, columns: Sequence[str], optional: Sequence[str] = (), setting: str = "data") -> list[Record]:
    """The rows of a local file, with ``columns`` (required) and ``optional`` columns (``None`` where absent).

    ``setting`` names the option the path came from, for the messages (e.g. ``"data.train_path"``)."""
    path = os.path.expanduser(str(path))
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise DataFileError(f"{setting}={path!r}: unknown file type {suffix!r}; give one of {sorted(FORMATS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{setting}: {path} does not exist")
    kind = FORMATS[suffix]
    if kind in ("csv", "tsv"):
        records = _read_delimited(path, "," if kind == "csv" else "\t", columns, optional)
    elif kind == "parquet":
        records = _read_parquet(path, columns, optional)
    else:
        records = _read_json(path, columns, optional)
    if not records:
        raise DataFileError(f"{setting}: {path} holds no rows; give a file with a header and at least one row")
    return records


def read_hub(
    name: str, split: str, columns: Sequence[str], optional: Sequence[str] = (), setting: str = "data"
) -> list[Record]:
    """The rows of split ``split`` of the Hub dataset ``name``. A ``ClassLabel`` column yields its label names."""
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 (add which setting to change)
        raise type(err)(
            f"{setting}={name!r} (split {split!r}) could not be loaded from the Hub ({err}); offline, give a local "
            ".csv/.tsv/.jsonl/.json/.parquet file instead"
        ) from err
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise DataFileError(f"{setting}={name!r} [{split}]: columns {missing} missing; it has {data.column_names}")
    present = [c for c in (*columns, *optional) if c in data.column_names]
    names = {c: data.features[c].names for c in present if isinstance(data.features[c], datasets.ClassLabel)}
    records = []
    for i, row in enumerate(data.select_columns(present)):
        values = {c: row.get(c) for c in (*columns, *optional)}
        for c, label_names in names.items():
            if isinstance(values[c], int) and 0 <= values[c] < len(label_names):
                values[c] = label_names[values[c]]
        records.append((f"{name} [{split}] row {i}", values))
    return records


def _pick(
    where: str, row: dict[str, Any], columns: Sequence[str], optional: Sequence[str], path: str
) -> dict[str, Any]:
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataFileError(f"{where}: columns {missing} missing; this row has {sorted(row)} (in {path})")
    return {c: row.get(c) for c in (*columns, *optional)}


def _read_delimited(path: str, delimiter: str, columns: Sequence[str], optional: Sequence[str]) -> list[Record]:
    name = "comma" if delimiter == "," else "tab"
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            while header is not None and not any(field.strip() for field in header):
                header = next(reader, None)  # leading blank lines
            if header is None:
                raise DataFileError(f"{path} is empty: give a header line (e.g. text{delimiter}label) and the rows")
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataFileError(
                    f"{path}:{reader.line_num}: columns {missing} missing from the header {header}; rename them "
                    "or set the data.*_column options to the names used"
                )
            index = {c: header.index(c) for c in (*columns, *optional) if c in header}
            records: list[Record] = []
            start = reader.line_num + 1
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    start = reader.line_num + 1
                    continue  # a blank line
                if len(fields) != len(header):
                    raise DataFileError(
                        f"{path}:{start}: {len(fields)} {name}-separated fields, the header has {len(header)}; quote "
                        f'a text that holds a {name} ("..."), or remove the stray {name}'
                    )
                records.append(
                    (f"{path}:{start}", {c: fields[index[c]] if c in index else None for c in (*columns, *optional)})
                )
                start = reader.line_num + 1
        except csv.Error as err:
            raise DataFileError(f"{path}:{reader.line_num}: not valid {name}-separated text ({err})") from None
    return records


def _read_json(path: str, columns: Sequence[str], optional: Sequence[str]) -> list[Record]:
    with open(path, encoding="utf-8-sig") as handle:
        text = handle.read()
    if not text.strip():
        raise DataFileError(f'{path} is empty: give one JSON object per line ({{"text": ..., "label": ...}})')
    if path.lower().endswith(".json") and text.lstrip().startswith("["):  # one JSON list of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as bad:
            raise DataFileError(f"{path}:{bad.lineno}: not valid JSON ({bad.msg}, column {bad.colno})") from None
        located = [(f"{path}: row {i + 1}", row) for i, row in enumerate(rows)]
    else:  # JSON lines
        located = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as bad:
                raise DataFileError(f"{path}:{n}: not valid JSON lines ({bad.msg}, column {bad.colno})") from None
    records: list[Record] = []
    for where, row in located:
        if not isinstance(row, dict):
            raise DataFileError(f"{where}: expected a JSON object with the columns, got {type(row).__name__}")
        records.append((where, _pick(where, row, columns, optional, path)))
    return records


def _read_parquet(path: str, columns: Sequence[str], optional: Sequence[str]) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataFileError(f"{path}: columns {missing} missing; the file has {names}")
        table = pq.read_table(path, columns=[c for c in (*columns, *optional) if c in names])
    except DataFileError:
        raise
    except Exception as err:  # noqa: BLE001 (pyarrow raises several types for a broken file)
        raise DataFileError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    return [
        (f"{path}: row {i + 1}", {c: row.get(c) for c in (*columns, *optional)})
        for i, row in enumerate(table.to_pylist())
    ]
