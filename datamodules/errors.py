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

#: files that ``data_errors`` checks for UTF-8 before they are read
_TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt")


class DataFileError(ValueError):
    """A data file is empty, malformed or unreadable; the message names the file (and line) and the fix."""


def utf8_error(path: str | os.PathLike) -> DataFileError | None:
    """The `DataFileError` naming the first line of ``path`` that is not valid UTF-8 (Python's own error gives a
    byte offset into the file), or None when the whole file decodes (checked in large chunks first)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
        return None
    except UnicodeDecodeError:
        pass
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return DataFileError(
                    f"{path}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
    return None


@contextmanager
def utf8_lines(path: str | os.PathLike) -> Iterator[None]:
    """Around a text read of ``path``: a ``UnicodeDecodeError`` becomes `utf8_error`'s message with the line."""
    try:
        yield
    except UnicodeDecodeError as err:
        named = utf8_error(path)
        if named is None:
            raise
        raise named from err


@contextmanager
def data_errors(what: str, files: Sequence[str | os.PathLike] = ()) -> Iterator[None]:
    """Around a ``datasets`` load of ``files`` (``what`` names them for the message, e.g. ``"data.train_path"``):
    turn ``DatasetGenerationError`` and a bare ``StopIteration`` (``datasets``' JSON reader on a 0-byte file) into
    the error that caused it.

    * a text file that is not valid UTF-8 is refused first, naming its line (`utf8_error`);
    * a :class:`DataFileError` raised by our own readers (its message names the file and line) is raised as is;
    * an empty file becomes a :class:`DataFileError` saying so;
    * anything else (a JSON or CSV parse error) becomes a :class:`DataFileError` naming ``what``, the files, the
      parser's message and, for JSON, the first file and line that does not parse; the original is chained.
    """
    from datasets.exceptions import DatasetGenerationError

    for name in map(str, files):  # pyarrow's JSON reader keeps invalid UTF-8, which then fails later, by byte offset
        bad = utf8_error(name) if name.lower().endswith(_TEXT_SUFFIXES) and os.path.isfile(name) else None
        if bad is not None:
            raise DataFileError(f"{what}: {bad}")
    try:
        yield
    except (DatasetGenerationError, StopIteration, UnicodeDecodeError) as err:
        cause = (err.__cause__ or err.__context__) if isinstance(err, DatasetGenerationError) else err
        if isinstance(cause, DataFileError):
            raise cause from None
        names = [str(f) for f in files]
        for name in names:  # a byte offset is no help: name the line
            bad = utf8_error(name) if os.path.isfile(name) else None
            if bad is not None:
                raise DataFileError(f"{what}: {bad}") from cause
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
