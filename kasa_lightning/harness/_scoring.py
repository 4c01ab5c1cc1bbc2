"""Scoring a ``KaSAModule`` with lm-evaluation-harness as it is in memory: the Hugging Face model with its adapted
layers (not merged, not exported and reloaded through PEFT, which cannot express KaSA's update) is handed to lm-eval's
``HFLM`` as ``pretrained=<model>``, with the tokenizer ``model.backbone`` names, and ``simple_evaluate`` runs the
tasks. Log-likelihood tasks call the model's forward; ``generate_until`` tasks call its ``generate``; both go through
the adapted layers.

One process, one device: lm-eval's data-parallel path needs it to load the model itself (``accelerate launch``), which
cannot give it our in-memory adapters, so several processes are refused (``single_process``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from kasa_lightning.harness._errors import EvalSetupError, require_lm_eval
from kasa_lightning.harness._tasks import load_tasks, task_manager


def parse_tasks(tasks: str | list[str]) -> list[str]:
    """``"arc_easy,hellaswag"`` (or a list) -> ``["arc_easy", "hellaswag"]``; each name once."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if len(set(names)) != len(names):
        raise EvalSetupError(f"--tasks {','.join(names)} names a task twice")
    return names


def single_process() -> None:
    """Refuse to run under several processes (``torchrun``, ``srun``, ``accelerate launch``): every rank would score
    every task and write the same files. Eval runs in one process on one device."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise EvalSetupError(
            f"eval runs in one process on one device, but this is one of {world} processes (WORLD_SIZE={world}); "
            "start it without torchrun/srun/accelerate. A model trained with DDP or FSDP is evaluated from its "
            "checkpoint (--ckpt_path), which holds whole tensors, in a single process"
        )


def check_scorable(module: Any) -> None:
    """A causal language model (lm-eval scores text continuations)."""
    if getattr(module, "task", None) != "causal_lm":
        raise EvalSetupError(
            f"eval scores causal language models, but model.task is {getattr(module, 'task', None)!r}; set "
            "model.task causal_lm (a classification or regression model has no text continuations to score)"
        )


def load_tokenizer(module: Any) -> Any:
    """The tokenizer that ``model.backbone`` names (a local folder, ``pkg://`` or a cached Hub name)."""
    from transformers import AutoTokenizer

    from kasa_lightning.hub import resolve_pretrained

    return AutoTokenizer.from_pretrained(resolve_pretrained(module.backbone_name, "model.backbone"))


def prepare_tasks(tasks: str | list[str], include_path: str | None = None) -> tuple[Any, list[Any]]:
    """Check the task names and the include path and build the tasks with their data (before any model is built,
    so that bad input fails fast): returns lm-eval's ``TaskManager`` and the task objects."""
    require_lm_eval()
    names = parse_tasks(tasks)
    manager = task_manager(names, include_path)
    return manager, load_tasks(manager, names)


def evaluate_module(
    module: Any,
    tasks: str | list[str],
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    include_path: str | None = None,
    apply_chat_template: bool = False,
    device: str | None = None,
    tokenizer: Any = None,
    log_samples: bool = False,
    bootstrap_iters: int = 100000,
    prepared: tuple[Any, list[Any]] | None = None,
) -> dict[str, Any]:
    """Score ``module`` (a ``KaSAModule`` with its adapters, configured) on lm-eval ``tasks``; returns lm-eval's
    results dict (``results``, ``versions``, ``n-shot``, ``configs``, ... and ``samples`` with ``log_samples``).

    Args:
        module: the module to score; ``configure_model()`` is called if it has not run.
        tasks: lm-eval task, group or tag names (a comma-separated string or a list).
        num_fewshot: few-shot examples per prompt (None: each task's own default).
        limit: score only the first ``limit`` documents per task (a fraction of them when < 1).
        batch_size: requests per forward pass.
        include_path: a folder of task YAML files (tasks of your own, local data).
        apply_chat_template: format prompts with the tokenizer's chat template (instruction-tuned models).
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``); None: CUDA when available, else the CPU.
        tokenizer: the tokenizer; None: the one ``model.backbone`` names.
        log_samples: keep every document's requests and responses under ``samples``.
        bootstrap_iters: bootstrap resamples for the standard errors of metrics without a closed form.
        prepared: lm-eval's ``TaskManager`` and the built tasks (``kasa_lightning.harness.prepare_tasks``), when
            the caller checked and loaded them before building the model.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    single_process()
    check_scorable(module)
    names = parse_tasks(tasks)
    if limit is not None and not limit > 0:
        raise EvalSetupError(f"--limit {limit} must be > 0 (a count, or a fraction of the documents when < 1)")
    if batch_size < 1:
        raise EvalSetupError(f"--batch_size {batch_size} must be >= 1")
    if num_fewshot is not None and num_fewshot < 0:
        raise EvalSetupError(f"--num_fewshot {num_fewshot} must be >= 0")
    if prepared is None:
        prepared = prepare_tasks(names, include_path)
    manager, objects = prepared
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(module)
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise EvalSetupError(
            f"--apply_chat_template: the tokenizer of model.backbone={module.backbone_name!r} has no chat template; "
            "leave the flag off for a base model, or use a backbone whose tokenizer has one"
        )
    module.configure_model()
    model = module.model
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    elsewhere = [
        p for p in model.parameters() if p.device.type != target.type or target.index not in (None, p.device.index)
    ]
    if elsewhere:  # a model already on the device (a quantised one is placed at load) is not moved
        model.to(target)
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)  # puts the model in eval mode
    try:
        results = simple_evaluate(
            model=lm,
            tasks=objects,
            task_manager=manager,
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=log_samples,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template,
            bootstrap_iters=bootstrap_iters,
        )
    finally:
        model.train(was_training)
    if results is None:  # lm-eval returns None on ranks other than 0; single_process() rules that out
        raise RuntimeError("lm-eval returned no results")
    return results
