"""Loading a dataset from the Hugging Face Hub by name or from local JSON / JSON-lines / Parquet files (paths,
directories or globs), with the same ``datasets.Dataset`` as the result either way, and errors that name the setting.
Which of the two a value means is ``kasa_lightning.hub.is_local_path``'s one rule.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from kasa_lightning.datamodules.errors import data_errors
from kasa_lightning.hub import is_local_path

# builder of each local file suffix (``datasets.load_dataset(builder, data_files=...)``)
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".gz": "json", ".parquet": "parquet"}


def load_local_or_hub(path: str | list[str], split: str, setting: str, cache_dir: str | None = None) -> Any:
    """The rows of ``path`` (a Hub name, loaded with ``split``; or local files/directories/globs, all rows) as a
    ``datasets.Dataset``. ``setting`` names the option the path came from (e.g. ``"data.train_path"``)."""
    import datasets

    paths = [path] if isinstance(path, str) else list(path)
    local = [p for p in paths if is_local_path(p)]
    if local and len(local) != len(paths):
        raise ValueError(f"{setting}={path!r} mixes local files and Hub names; give one kind")
    if local:
        files: list[str] = []
        for pattern in paths:
            pattern = os.path.expanduser(pattern)
            if os.path.isdir(pattern):
                found = sorted(
                    f for ext in ("json", "jsonl", "parquet") for f in glob.glob(os.path.join(pattern, f"*.{ext}"))
                )
            else:
                found = sorted(glob.glob(pattern))
            if not found:
                raise FileNotFoundError(f"{setting}: no file matches {pattern!r}")
            files += found
        builders = {LOCAL_BUILDERS.get(os.path.splitext(f)[1].lower(), "json") for f in files}
        if len(builders) > 1:
            raise ValueError(f"{setting} mixes JSON and Parquet files: {files}")
        with data_errors(setting, files):  # a parse error or empty file: named, last line
            return datasets.load_dataset(builders.pop(), data_files=files, split="train", cache_dir=cache_dir)
    if len(paths) != 1:
        raise ValueError(f"{setting}: give one Hub dataset name, not {paths}")
    try:
        return datasets.load_dataset(paths[0], split=split, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 (add which setting to change)
        message = (
            f"{setting}={paths[0]!r} (split {split!r}) could not be loaded from the Hub ({err}); "
            "offline, give local .json/.jsonl/.parquet files instead"
        )
        try:
            wrapped = type(err)(message)
        except Exception:  # noqa: BLE001 (exception types with other constructors)
            wrapped = RuntimeError(message)
        raise wrapped from err
