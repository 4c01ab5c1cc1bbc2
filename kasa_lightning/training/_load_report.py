"""Loading a pretrained backbone without a false alarm: transformers prints a "LOAD REPORT" table (as a warning of
the ``transformers.modeling_utils`` logger) whenever a checkpoint key is missing, unexpected or mismatched. Fine-tuning
a classifier always hits that, because the classification head is new, and a newcomer reads the table as an error.

``from_pretrained_reported`` holds that table back while ``from_pretrained`` runs and sorts the keys it names
(``from_pretrained(..., output_loading_info=True)``):

* expected: for ``classification`` / ``regression``, missing keys outside the base model (the new head, e.g.
  ``classifier.weight``) and unexpected keys outside it (the checkpoint's head for another task, e.g. a pretraining
  ``lm_head.*``). These get one line of ours, and the table is dropped.
* everything else (a base weight missing or unexpected, any shape mismatch, any key of a ``causal_lm`` model): the
  held table is printed as transformers would have printed it, followed by a warning that names the keys. If
  ``from_pretrained`` raises (a size mismatch does), the table is printed before the error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

#: the logger transformers writes the LOAD REPORT table to
TRANSFORMERS_LOGGER = "transformers.modeling_utils"


class _HoldReport(logging.Filter):
    """Keeps the LOAD REPORT record instead of letting it through (other records pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


def from_pretrained_reported(auto: Any, path: str, task: str, setting: str, **kwargs: Any) -> nn.Module:
    """``auto.from_pretrained(path, **kwargs)`` with the report described above; ``setting`` (e.g.
    ``model.backbone='roberta-base'``) names the checkpoint in the warning."""
    logger = logging.getLogger(TRANSFORMERS_LOGGER)
    hold = _HoldReport()
    logger.addFilter(hold)
    try:
        model, info = auto.from_pretrained(path, output_loading_info=True, **kwargs)
    except BaseException:
        logger.removeFilter(hold)
        _replay(logger, hold)
        raise
    logger.removeFilter(hold)
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(key for key, *_ in info["mismatched_keys"])
    expected = task != "causal_lm"
    new_head = [k for k in missing if expected and not _in_base(model, k)]
    other_head = [k for k in unexpected if expected and not _in_base(model, k)]
    problems = {
        "missing from the checkpoint (initialised randomly)": [k for k in missing if k not in new_head],
        "in the checkpoint but not in the model (not loaded)": [k for k in unexpected if k not in other_head],
        "of another shape in the checkpoint (initialised randomly)": mismatched,
    }
    if new_head:
        rank_zero_info(f"{_keys(new_head)}: new {task} head, initialised randomly (expected)")
    if other_head:
        rank_zero_info(f"{_keys(other_head)}: the checkpoint's head for another task, not used (expected)")
    if any(problems.values()):
        _replay(logger, hold)
        found = "; ".join(f"{what}: {_keys(keys)}" for what, keys in problems.items() if keys)
        rank_zero_warn(
            f"{setting}: base weights {found}. The model will not behave as the pretrained one; check that the "
            "checkpoint matches the architecture."
        )
    return model


def _in_base(model: nn.Module, key: str) -> bool:
    """Whether ``key`` belongs to the base model (``bert.*``, or unprefixed ``encoder.*`` of a base checkpoint)
    rather than to a task head beside it."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module) or base is model:
        return True  # no separate head to tell apart: every key counts as a base weight
    first = key.split(".", 1)[0]
    return first == prefix or first in dict(base.named_children())


def _keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _replay(logger: logging.Logger, hold: _HoldReport) -> None:
    for record in hold.held:
        logger.handle(record)
