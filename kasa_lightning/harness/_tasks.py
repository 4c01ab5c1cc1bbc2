"""Finding and loading lm-evaluation-harness tasks: the names checked before anything slow runs, the task index
built over ``--include_path`` alone when it defines every task asked for (lm-eval's own index reads every task file
it ships, which takes many seconds), and each task's data loaded without the Hub's retries when the Hub cannot be
reached.

lm-eval loads a task's data with ``datasets.load_dataset(dataset_path, dataset_name, **dataset_kwargs)`` when it
builds the task. A Hub dataset that is not in the local cache then either fails (offline mode) or retries with back-off
before failing (no network; docs/evaluation.md has the time). Here, when a task needs a Hub dataset and offline mode is
on or one request to the Hub gets no answer (``kasa_lightning.hub``), the tasks are built with the Hub libraries in
offline mode: a cached dataset loads from the cache, any other fails at once with ``TaskDataUnavailableError``,
which names the task, the dataset and the two ways out.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kasa_lightning.harness._errors import EvalSetupError, TaskDataUnavailableError


def task_manager(names: list[str], include_path: str | None) -> Any:
    """lm-eval's ``TaskManager`` that knows every name in ``names``: over ``include_path`` alone when that folder
    defines them all (with every group member and tag), else over lm-eval's tasks and ``include_path`` (whose tasks
    take precedence). Raises ``EvalSetupError`` for a missing include path or an unknown name."""
    from lm_eval.tasks import TaskManager

    if not names:
        raise EvalSetupError("--tasks names no task; give lm-eval task names, e.g. --tasks arc_easy,hellaswag")
    if include_path is not None:
        folder = Path(include_path).expanduser()
        if not folder.is_dir():
            raise EvalSetupError(
                f"--include_path {include_path}: no such directory; give the folder that holds your task YAML files"
            )
        local = TaskManager(include_path=str(folder), include_defaults=False)
        if not local.all_tasks:
            raise EvalSetupError(
                f"--include_path {include_path}: no lm-eval task YAML found in it (a task file has a 'task:' key; "
                "see examples/lm_eval_task/)"
            )
        if all(_known(local, name, set()) for name in names):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [name for name in names if name not in manager.task_index]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.75)
            hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = f"lm-eval's tasks or --include_path {include_path}" if include_path else "lm-eval's tasks"
        raise EvalSetupError(
            f"--tasks: unknown task(s) {', '.join(hints)}: not in {where}. List them with `lm-eval ls tasks`, or "
            "write a task YAML and pass its folder as --include_path"
        )
    return manager


def _known(manager: Any, name: str, seen: set[str]) -> bool:
    """Whether ``name`` and everything it stands for (group members, tagged tasks) are in ``manager``'s index."""
    entry = manager.task_index.get(name)
    if entry is None:
        return False
    if name in seen:
        return True
    seen.add(name)
    kind = entry.kind.name
    if kind == "TAG":
        return all(_known(manager, t, seen) for t in entry.tags)
    if kind == "GROUP":
        for item in _members(entry.cfg):
            if isinstance(item, str) and not _known(manager, item, seen):
                return False
            inline = isinstance(item, dict) and isinstance(item.get("task"), str)
            if inline and item["task"] not in manager.task_index and "dataset_path" not in item:
                return False
    return True


def _members(cfg: dict[str, Any] | None) -> list[Any]:
    items = (cfg or {}).get("task", [])
    return list(items) if isinstance(items, list) else [items]


def leaf_datasets(manager: Any, name: str, seen: set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(task name, dataset settings) of each task that ``name`` stands for: ``dataset_path``, ``dataset_name`` and
    ``dataset_kwargs`` as the task's YAML gives them (group members with the group's overrides)."""
    seen = set() if seen is None else seen
    entry = manager.task_index.get(name)
    if entry is None or name in seen:
        return []
    seen.add(name)
    kind = entry.kind.name
    if kind == "TAG":
        return [leaf for task in sorted(entry.tags) for leaf in leaf_datasets(manager, task, seen)]
    if kind == "GROUP":
        leaves: list[tuple[str, dict[str, Any]]] = []
        for item in _members(entry.cfg):
            if isinstance(item, str):
                leaves += leaf_datasets(manager, item, seen)
            elif isinstance(item, dict) and isinstance(item.get("task"), str):
                base = manager.task_index.get(item["task"])
                cfg = {**((base.cfg or {}) if base is not None else {}), **item}
                leaves.append((item["task"], _dataset(cfg)))
        return leaves
    return [(name, _dataset(entry.cfg or {}))]


def _dataset(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in ("dataset_path", "dataset_name", "dataset_kwargs")}


def needs_hub(dataset: dict[str, Any]) -> bool:
    """Whether a task's data comes from the Hugging Face Hub: its ``dataset_path`` is not one of the ``datasets``
    file builders (``json``, ``csv``, ``parquet``, ...) and not a local folder."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    path = dataset.get("dataset_path")
    if not isinstance(path, str) or not path:
        return False  # a Python task or a custom_dataset: lm-eval's own code decides
    return path not in _PACKAGED_DATASETS_MODULES and not os.path.isdir(os.path.expanduser(path))


def describe(dataset: dict[str, Any]) -> str:
    """``'allenai/ai2_arc' (ARC-Easy)``."""
    name = dataset.get("dataset_name")
    return f"{dataset.get('dataset_path')!r}" + (f" ({name})" if name else "")


def hub_unavailable() -> str | None:
    """Why the Hub cannot be used now (offline mode, or one request got no answer), or None when it can."""
    import datasets
    from huggingface_hub import constants

    from kasa_lightning.hub import _hub_unreachable

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)"
    reason = _hub_unreachable(constants.ENDPOINT, constants.HF_HUB_ETAG_TIMEOUT)
    if reason is not None:
        return (
            f"the Hub at {constants.ENDPOINT} cannot be reached ({reason}; waited at most "
            f"HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT} s)"
        )
    return None


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Inside, ``huggingface_hub`` and ``datasets`` run in offline mode (their module settings, which both read at
    call time): cached data loads from the cache, anything else fails at once instead of retrying."""
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def load_tasks(manager: Any, names: list[str]) -> list[Any]:
    """Build each requested task (its data loaded, as lm-eval does) and return the objects ``simple_evaluate``
    takes: a ``Task``, a ``Group``, or the tasks of a tag. Raises ``TaskDataUnavailableError`` for a task whose Hub
    dataset is not cached while the Hub cannot be used, and ``EvalSetupError`` for data that failed to load."""
    hub = {name: [(t, d) for t, d in leaf_datasets(manager, name) if needs_hub(d)] for name in names}
    reason = hub_unavailable() if any(hub.values()) else None
    built: list[Any] = []
    for name in names:
        try:
            with hub_offline() if reason is not None else contextlib.nullcontext():
                loaded = manager.load([name])
        except (OSError, ValueError) as err:  # what datasets raises for data it cannot find or read
            if isinstance(err, EvalSetupError):
                raise
            if reason is not None and hub[name]:
                raise TaskDataUnavailableError(_unavailable(name, hub[name], reason, err)) from err
            hint = (
                f" (relative data_files paths are read from the working directory, {os.getcwd()})"
                if isinstance(err, FileNotFoundError)
                else ""
            )
            raise EvalSetupError(
                f"--tasks {name}: its data could not be loaded{hint}: {type(err).__name__}: {err}"
            ) from err
        if name in loaded["groups"]:
            built.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            built.append(loaded["tasks"][name])
        else:  # a tag: its tasks
            built.extend(loaded["tasks"].values())
    return built


def _unavailable(name: str, leaves: list[tuple[str, dict[str, Any]]], reason: str, err: Exception) -> str:
    from datasets import config

    tasks = ", ".join(f"{task} needs {describe(d)}" for task, d in leaves)
    return (
        f"--tasks {name}: the task's data is not in the local cache ({config.HF_DATASETS_CACHE}) and cannot be "
        f"downloaded: {reason}. {tasks}. Two ways out: (1) write a local task YAML whose data is local "
        "(dataset_path: json, dataset_kwargs: {data_files: {test: your.jsonl}}) and pass its folder as "
        "--include_path (see examples/lm_eval_task/); or (2) connect to the network (unset HF_HUB_OFFLINE and "
        f"HF_DATASETS_OFFLINE) so that the dataset downloads once into the cache. ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''})"
    )
