"""Short command-line errors for bad settings, named as the user writes them.

* `CLIError`: an error the command line prints as ``error: ...`` (its last line names the setting) and exits with
  status 2, as for a misspelled option, instead of a traceback.
* `setting_error`: LightningCLI builds the model, the DataModule and their nested dataclasses (``AdapterConfig``)
  after parsing, in ``instantiate_classes``; a value that their ``__init__`` refuses (``--model.adapter.r 0``)
  surfaces as jsonargparse's "Does not validate against any of the Union subtypes" with a ``Namespace(...)`` dump,
  75-113 lines, and names ``AdapterConfig.r``. This finds the class's own message in that chain and the setting's
  path in the parsed config, and says ``model.adapter.r=0 is invalid: <the rule>``.
* `check_root_dir`: a ``trainer.default_root_dir`` inside a regular file (``NotADirectoryError`` once a folder is
  made there) is refused, naming the setting.
* `check_ckpt_path`: ``--ckpt_path`` that is a folder (list its ``.ckpt`` files) or an adapter ``.safetensors``
  file (say what it is and how to use it), refused before anything is built or written.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: values of ``--ckpt_path`` that Lightning resolves itself
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")
#: "AdapterConfig.r=0 is invalid: the rank must ..." (a class's message about one of its fields)
_CLASS_FIELD = re.compile(r"^(?P<cls>[A-Z]\w*)\.(?P<field>\w+)=(?P<value>.+?) is invalid: (?P<rule>.+)$")
#: "data.batch_size=0 must be >= 1" (a message that already names a setting of the config)
_SETTING = re.compile(r"^(?P<setting>(?:model|data|trainer)(?:\.\w+)+)=(?P<value>\S+?):? (?P<rule>.+)$")
_SHOWN_FILES = 20


class CLIError(ValueError):
    """A bad command-line value: ``python -m kasa_lightning`` prints ``error: <message>`` (the last line names the
    setting) and exits with status 2. ``details`` are lines printed before it (e.g. candidate files)."""

    def __init__(self, message: str, details: Iterable[str] = ()) -> None:
        self.message, self.details = message, list(details)
        super().__init__("\n".join([*self.details, message]))


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__`` chain, innermost first."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__  # type: ignore[assignment]
    return chain[::-1]


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf of a nested mapping."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _as_written(path: str, args: Iterable[str]) -> str:
    """``path`` as the user wrote it: with ``init_args.`` if a command-line option spelled it so, else without."""
    if any(str(a).lstrip("-").split("=")[0] == path for a in args):
        return path
    return path.replace(".init_args.", ".").replace("init_args.", "")


def setting_error(exc: BaseException, config: Mapping[str, Any], args: Iterable[str] = ()) -> CLIError | None:
    """The `CLIError` for a value refused by a class built from ``config`` (the subcommand's parsed config, as a
    dict), or None when ``exc`` is not such a refusal (then the original error stands)."""
    args = list(args)
    texts = [str(e) for e in _causes(exc)]
    lines = [line.strip().lstrip("- ").strip() for text in texts for line in [text, *text.splitlines()]]
    for line in lines:
        match = _SETTING.match(line)
        if match is not None:
            setting = match["setting"]
            first, _, rest = setting.partition(".")
            full = f"{first}.init_args.{rest}"
            known = dict(_leaves(config))
            path = full if full in known and setting not in known else setting
            rule = match["rule"].removeprefix("is invalid: ")
            return CLIError(f"{_as_written(path, args)}={match['value']} is invalid: {rule}")
        match = _CLASS_FIELD.match(line)
        if match is not None:
            field, value = match["field"], match["value"]
            found = [p for p, v in _leaves(config) if p.rsplit(".", 1)[-1] == field and repr(v) == value]
            owner = match["cls"].lower()  # prefer the path whose parent key is part of the class name (adapter)
            found.sort(key=lambda p: p.count(".") == 0 or p.split(".")[-2].lower() not in owner)
            name = _as_written(found[0], args) if found else f"{match['cls']}.{field}"
            return CLIError(f"{name}={value} is invalid: {match['rule']}")
    return None


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file, or None when ``path`` is not one (8-byte little-endian header
    length, then a JSON header)."""
    import json

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if size > 100_000_000:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    return dict(header.get("__metadata__") or {}) if isinstance(header, dict) else None


def foreign_file_message(path: str | Path, flag: str = "--ckpt_path") -> str | None:
    """What to say when ``path`` is a safetensors file rather than a fit checkpoint (None otherwise); ``flag``
    (``""`` for none) comes first, naming the setting."""
    meta = _safetensors_metadata(Path(path))
    if meta is None:
        return None
    if "adapter_config" in meta:
        what = "a kasa-lightning adapter file (written by `export --format adapter` or the AdapterExport callback)"
        use = (
            "load it onto the original base model with kasa_lightning.load_adapter(model, path), or pass the "
            "checkpoint it came from (<run>/checkpoints/*.ckpt)"
        )
    else:
        what = "a safetensors weights file (a PEFT adapter or a Hugging Face model)"
        use = "pass a .ckpt file written by `fit` (<run>/checkpoints/*.ckpt)"
    return f"{flag} {path} is {what}, not a fit checkpoint: {use}".lstrip()


def check_ckpt_path(value: Any, flag: str = "--ckpt_path") -> None:
    """Refuse (`CLIError`) a local ``--ckpt_path`` that is a folder or a safetensors file; anything else (a file,
    ``last``/``best``, a URL, a missing path) is left to the loader."""
    if value is None or not isinstance(value, (str, Path)):
        return
    text = str(value)
    if text in _SPECIAL_CKPT or "://" in text:
        return
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(path.rglob("*.ckpt"), key=lambda p: (len(p.parts), str(p)))
        details = [f"  {p}" for p in found[:_SHOWN_FILES]]
        if len(found) > _SHOWN_FILES:
            details.append(f"  ... and {len(found) - _SHOWN_FILES} more")
        if found:
            details.insert(0, f".ckpt files in {path}:")
            example = next((p for p in found if p.name == "last.ckpt"), found[0])
            hint = f"pass one of the .ckpt files listed above (e.g. {flag} {example})"
        else:
            hint = "it holds no .ckpt file; pass a checkpoint written by `fit` (<run>/checkpoints/last.ckpt)"
        raise CLIError(f"{flag} {text} is a folder (a directory), not a checkpoint file: {hint}", details)
    if path.is_file():
        message = foreign_file_message(path, flag)
        if message is not None:
            raise CLIError(message)


def check_root_dir(value: Any, setting: str = "trainer.default_root_dir") -> None:
    """Refuse (`CLIError`) a local folder setting whose path runs through a regular file."""
    if value is None or "://" in str(value):
        return
    path = Path(str(value)).expanduser()
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise CLIError(f"{setting}={str(value)!r} is invalid: it {where}, not a folder; give a folder path")
            return


def resolve_best(root: Any, command: str) -> str:
    """``--ckpt_path best`` for ``validate``/``test``/``predict`` in a new process: Lightning resolves ``best`` only
    from the ``ModelCheckpoint`` of the fit that ran in the same Trainer, so here it is the ``best_model_path`` that
    the newest run under ``root`` recorded in its ``metrics.json``. Refuses (`CLIError`) when no run did."""
    import json

    base = Path(str(root or ".")).expanduser()
    found = []
    for metrics in [base / "metrics.json", *base.glob("*/metrics.json"), *base.glob("lightning_logs/*/metrics.json")]:
        try:
            fit = json.loads(metrics.read_text()).get("fit") or {}
        except (OSError, ValueError, AttributeError):
            continue
        best = fit.get("best_model_path")
        if best and Path(best).is_file():
            found.append((metrics.stat().st_mtime, best, fit.get("best_model_score")))
    if not found:
        raise CLIError(
            f"--ckpt_path best: no run under trainer.default_root_dir={str(base)!r} recorded a best checkpoint (a "
            "fit with a ModelCheckpoint that monitors a metric writes it to its metrics.json); give the run's "
            f"default_root_dir, or the file itself: {command} ... --ckpt_path <run>/checkpoints/best-*.ckpt"
        )
    _, best, score = max(found)
    print(f"--ckpt_path best: {best} (the newest run's best checkpoint, score {score})", file=sys.stderr, flush=True)
    return str(best)


def damaged_checkpoint(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be read (a torch checkpoint is a zip archive: a truncated one has no
    central directory at its end), or None when it looks whole. Reads the archive's index only."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile) as err:
        return f"{type(err).__name__}: {err}"
    return None


def damaged_last_message(last: Path) -> str | None:
    """For a run folder's damaged ``last.ckpt``: what is wrong, the run's other checkpoints that are whole, and how
    to restart from one (None when ``last`` is readable)."""
    problem = damaged_checkpoint(last)
    if problem is None:
        return None
    others = sorted(
        (p for p in last.parent.glob("*.ckpt") if p != last and damaged_checkpoint(p) is None),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if others:
        use = (
            f"whole checkpoints of this run, newest first: {', '.join(p.name for p in others)}. To go on from one: "
            f"mv {last} {last}.damaged && cp {others[0]} {last}, then rerun the sweep command (or delete the run "
            "folder to train the run anew)"
        )
    else:
        use = f"no other checkpoint of this run is whole: delete {last.parent.parent} and rerun the sweep command"
    return f"{last} is damaged ({problem}), so every rerun would fail on it; {use}"
