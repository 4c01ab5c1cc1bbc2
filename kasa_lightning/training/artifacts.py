"""Turn a trained ``KaSAModule`` into deployable files (used by ``python -m kasa_lightning export`` and the
``AdapterExport`` callback)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kasa_lightning.hub import resolve_for_export, resolve_pretrained
from kasa_lightning.kasa import export_peft, merge_and_unload, save_adapter
from kasa_lightning.kasa.atomic import default_file_mode
from kasa_lightning.kasa.merge_files import write_merged_from_checkpoint

if TYPE_CHECKING:
    from kasa_lightning.training.module import KaSAModule

ExportFormat = Literal["peft-kasa", "peft-lora", "merged", "adapter"]
FORMATS = ("peft-kasa", "peft-lora", "merged", "adapter")


def prepare_output_dir(output_dir: str | Path, overwrite: bool = False, keep: Iterable[str | Path] = ()) -> Path:
    """Make ``output_dir`` an empty folder for an export, so that the export never mixes with older files (a PEFT
    adapter next to a merged model is loaded by transformers ON TOP of the merged weights: silently wrong).

    A missing or empty folder is used as is. A non-empty one is refused unless ``overwrite``; then its entries are
    deleted first: files and symbolic links inside are unlinked (links are never followed), sub-folders removed
    with ``shutil.rmtree``. Nothing outside the folder is touched. Refused even with ``overwrite``: a folder that
    holds any of ``keep`` (the checkpoint being exported) or the current directory or the home directory, and a
    filesystem root.

    Raises:
        FileExistsError: ``output_dir`` is a file, or a non-empty folder and ``overwrite`` is false.
        ValueError: ``overwrite`` would delete something listed above.
    """
    out = Path(output_dir)
    real = out.resolve()
    if real.exists() and not real.is_dir():
        raise FileExistsError(f"output_dir {str(out)!r} is a file, not a folder; choose a folder to export into")
    entries = sorted(p.name for p in real.iterdir()) if real.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"output_dir {str(out)!r} is not empty ({len(entries)} entries: {shown}); an export there would mix with "
            "those files (an adapter next to a merged model is applied on top of the merged weights). Choose a new "
            "or empty folder, or pass --overwrite (overwrite=True) to delete its contents first."
        )
    if entries:
        protected = [(Path(k).resolve(), f"the checkpoint {str(k)!r}") for k in keep]
        protected += [(Path.cwd().resolve(), "the current directory"), (Path.home().resolve(), "the home directory")]
        for path, what in protected:
            if path == real or real in path.parents:
                raise ValueError(
                    f"output_dir {str(out)!r} holds {what}; --overwrite would delete it. Export into another folder."
                )
        if real.parent == real:
            raise ValueError(f"output_dir {str(out)!r} is a filesystem root; export into a folder of its own")
        for entry in real.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    real.mkdir(parents=True, exist_ok=True)
    return out


def export_module(module: KaSAModule, format: ExportFormat, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``module``'s adapted model as ``format`` into ``output_dir`` (which must be new or empty, unless
    ``overwrite``: see ``prepare_output_dir``):

    * ``peft-kasa``: a PEFT KaSA adapter; ``peft-lora``: a plain LoRA adapter on the ORIGINAL base;
    * ``merged``: a Hugging Face model directory with the update merged in (``save_pretrained``) + tokenizer; on a
      quantised base, the ORIGINAL full-precision checkpoint with the update merged in (``merge_files``);
    * ``adapter``: this project's safetensors adapter file (``adapter.safetensors``).
    PEFT adapters name their base as transformers resolves it: a ``pkg://`` backbone becomes its absolute directory.
    The module itself is left unchanged.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    output_dir = prepare_output_dir(output_dir, overwrite)
    base_name = module.backbone_name if module.backbone_config is None else None
    if format in ("peft-kasa", "peft-lora"):
        base = resolve_for_export(base_name) if base_name is not None else None
        peft_type: Literal["kasa", "lora"] = "kasa" if format == "peft-kasa" else "lora"
        export_peft(module.model, output_dir, format=peft_type, base_model_name_or_path=base)
    elif format == "adapter":
        save_adapter(module.model, output_dir / "adapter.safetensors")
    else:
        if module.quantization is not None:
            # the update cannot be merged into quantised codes: merge it into the ORIGINAL full-precision weights,
            # read file by file from the base checkpoint
            write_merged_from_checkpoint(module.model, output_dir)
        else:
            merged: Any = merge_and_unload(copy.deepcopy(module.model))  # a Hugging Face model (untyped library)
            merged.save_pretrained(output_dir)
        if base_name is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(resolve_pretrained(base_name)).save_pretrained(output_dir)
        # transformers writes model.safetensors through safetensors, which creates it 0600: give it the usual mode
        for file in output_dir.rglob("*.safetensors"):
            file.chmod(default_file_mode())
    return output_dir
