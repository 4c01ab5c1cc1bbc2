"""Data errors that say what is wrong: the file, the line, and what to do.

``datasets`` wraps whatever goes wrong while it builds a dataset (a malformed row our reader rejects, a JSON
parse error) in a generic ``DatasetGenerationError("An error occurred while generating the dataset")``, so the
last line of the traceback, the one users read, says nothing. :func:`data_errors` re-raises the real error
instead, so that the last line is ours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class DataFileError(ValueError):
    """A data file is empty, malformed or unreadable; the message names the file (and line) and the fix."""


@contextmanager
def data_errors(what: str, files: Sequence[str | os.PathLike] = ()) -> Iterator[None]:
    """Around a ``datasets`` load of ``files`` (``what`` names them for the message, e.g. ``"data.train_path"``):
    turn ``DatasetGenerationError`` and a bare ``StopIteration`` (``datasets``' JSON reader on a 0-byte file) into
    the error that caused it.

    * a :class:`DataFileError` raised by our own readers (its message names the file and line) is raised as is;
    * an empty file becomes a :class:`DataFileError` saying so;
    * anything else (a JSON or CSV parse error) becomes a :class:`DataFileError` naming ``what``, the files, the
      parser's message and, for JSON, the first file and line that does not parse; the original is chained.
    """
    from datasets.exceptions import DatasetGenerationError

    try:
        yield
    except (DatasetGenerationError, StopIteration) as err:
        cause = (err.__cause__ or err.__context__) if isinstance(err, DatasetGenerationError) else err
        if isinstance(cause, DataFileError):
            raise cause from None
        names = [str(f) for f in files]
        empty = [f for f in names if os.path.isfile(f) and not _has_content(f)]
        if empty:
            raise DataFileError(
                f"{what}: {empty[0]} is empty (no data); give the file with its rows, or remove it from {what}"
            ) from None
        if cause is None:
            raise
        where = _first_bad_json(names) if any(f.endswith((".json", ".jsonl", ".json.gz")) for f in names) else None
        if where is None:
            where = f"could not read {names if len(names) != 1 else names[0]}: {type(cause).__name__}: {cause}"
        raise DataFileError(f"{what}: {where}") from cause


def _has_content(path: str) -> bool:
    with open(path, "rb") as handle:
        return bool(handle.read(4096).strip())


def _first_bad_json(files: Sequence[str]) -> str | None:
    """``"<file>:<line>: <json error>"`` for the first file that is neither one JSON document nor JSON lines."""
    for path in files:
        if not path.endswith((".json", ".jsonl")) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            json.loads(text)
            continue  # one JSON document: fine
        except json.JSONDecodeError as whole:
            if text.lstrip().startswith("["):  # a JSON list: its own error is the one to report
                return f"{path}:{whole.lineno}: not valid JSON ({whole.msg}, column {whole.colno})"
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as bad:
                    return f"{path}:{n}: not valid JSON lines ({bad.msg}, column {bad.colno})"
    return None
