"""The errors of ``python -m kasa_lightning eval`` and the import of lm-evaluation-harness (an optional extra)."""

from __future__ import annotations

from types import ModuleType

#: the oldest lm-evaluation-harness with the task API used here (``TaskManager.load``, the ``Entry`` task index)
LM_EVAL_MIN_VERSION = "0.4.12"


class EvalSetupError(ValueError):
    """Bad input to ``eval`` (unknown task, missing include path, a model that cannot be scored); the message names
    the setting and the fix."""


class TaskDataUnavailableError(EvalSetupError):
    """A task whose dataset is neither in the local cache nor downloadable now (offline mode, or no network)."""


def require_lm_eval() -> ModuleType:
    """``lm_eval``, imported; an ``ImportError`` naming the extra when it is missing or too old."""
    hint = 'install the extra: pip install "kasa-lightning[eval]"'
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(f"python -m kasa_lightning eval needs lm-evaluation-harness (lm-eval); {hint}") from err
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        found = version("lm_eval")
    except PackageNotFoundError:
        found = getattr(lm_eval, "__version__", "0")
    if Version(found) < Version(LM_EVAL_MIN_VERSION):
        raise ImportError(
            f"python -m kasa_lightning eval needs lm-eval >= {LM_EVAL_MIN_VERSION}, found {found}; {hint}"
        )
    return lm_eval
