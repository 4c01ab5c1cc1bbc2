"""Reliability, export: a non-empty output folder is refused unless --overwrite, which then clears it safely
(item 4); exported PEFT adapters name a base that transformers and peft resolve, so AutoPeftModel* loads them
(item 16)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_helpers import MINILM, tiny_data

from kasa_lightning import AdapterConfig, KaSAModule
from kasa_lightning.cli import main
from kasa_lightning.hub import resolve_pretrained

IDS = torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A real fit checkpoint of KaSA on the packaged MiniLM (2 steps) and the logits it gives on ``IDS``."""
    root = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    module = KaSAModule(backbone=MINILM, adapter=AdapterConfig(r=4, target_modules=["query", "value"]))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    trainer.fit(module, tiny_data(tokenizer=MINILM, train_size=16))
    ckpt = root / "ckpt" / "last.ckpt"
    with torch.no_grad():
        expected = KaSAModule.load_from_checkpoint(ckpt, map_location="cpu").eval()(input_ids=IDS).logits
    return ckpt, expected


def _export(ckpt: Path, fmt: str, out: Path, *extra: str) -> None:
    main(["export", "--ckpt_path", str(ckpt), "--format", fmt, "--output_dir", str(out), *extra])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_adapter_export_into_a_merged_model_folder_needs_overwrite(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from kasa_lightning.kasa import export_peft

    ckpt, expected = trained
    out = tmp_path / "model"
    _export(ckpt, "merged", out)
    merged_files = sorted(p.name for p in out.iterdir())
    torch.testing.assert_close(
        _logits(AutoModelForSequenceClassification.from_pretrained(out)), expected, atol=1e-4, rtol=1e-4
    )
    # why: an adapter written next to the merged model is applied by transformers ON TOP of the merged weights
    mixed = tmp_path / "mixed"
    _export(ckpt, "merged", mixed)
    export_peft(
        KaSAModule.load_from_checkpoint(ckpt, map_location="cpu").model,
        mixed,
        format="lora",
        base_model_name_or_path=resolve_pretrained(MINILM),
    )
    off = (_logits(AutoModelForSequenceClassification.from_pretrained(mixed)) - expected).abs().max()
    assert off > 5e-4, off  # 1.5e-3 here (2 steps, r=4); the correct loads below agree within 1e-4

    with pytest.raises(FileExistsError, match=r"not empty .*--overwrite"):
        _export(ckpt, "peft-lora", out)
    assert sorted(p.name for p in out.iterdir()) == merged_files  # untouched
    _export(ckpt, "peft-lora", out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    torch.testing.assert_close(
        _logits(AutoModelForSequenceClassification.from_pretrained(out)), expected, atol=1e-4, rtol=1e-4
    )


def test_overwrite_never_deletes_the_checkpoint_or_anything_outside(trained, tmp_path, monkeypatch):
    from kasa_lightning.training.artifacts import prepare_output_dir

    ckpt, _ = trained
    run = tmp_path / "run"
    (run / "ckpts").mkdir(parents=True)
    own_ckpt = run / "ckpts" / "last.ckpt"
    own_ckpt.write_bytes(ckpt.read_bytes())
    for out in (run / "ckpts", run):  # the checkpoint's folder, and a folder above it
        with pytest.raises(ValueError, match="holds the checkpoint"):
            _export(own_ckpt, "peft-lora", out, "--overwrite")
        assert own_ckpt.read_bytes() == ckpt.read_bytes()

    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "sub" / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    (out / "nested").mkdir(parents=True)
    (out / "nested" / "old.bin").write_bytes(b"old")
    (out / "old.json").write_text("{}")
    os.symlink(outside, out / "link_to_dir")
    os.symlink(outside / "keep.txt", out / "link_to_file")
    with pytest.raises(FileExistsError, match="4 entries"):
        prepare_output_dir(out)
    prepare_output_dir(out, overwrite=True)
    assert out.is_dir() and not list(out.iterdir())
    assert (outside / "keep.txt").read_text() == "keep" and (outside / "sub" / "keep.txt").read_text() == "keep"

    monkeypatch.chdir(out)
    (out / "x").write_text("x")
    for protected in (out, tmp_path):  # the current directory and its parents
        with pytest.raises(ValueError, match="current directory"):
            prepare_output_dir(protected, overwrite=True)
    assert (out / "x").exists()
    with pytest.raises(FileExistsError, match="is a file"):
        prepare_output_dir(out / "x", overwrite=True)
    assert prepare_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"  # created, empty


@pytest.mark.parametrize("fmt", ["peft-lora", "peft-kasa"])
def test_auto_peft_model_loads_the_export_offline(trained, tmp_path, fmt):
    peft = pytest.importorskip("peft")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: nothing may come from the network
    ckpt, expected = trained
    out = tmp_path / fmt
    _export(ckpt, fmt, out)
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not base.startswith("pkg://") and os.path.isabs(base) and Path(base, "config.json").is_file()
    assert Path(base).samefile(resolve_pretrained(MINILM))
    model = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(out))
    torch.testing.assert_close(_logits(model), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(peft.AutoPeftModel.from_pretrained(str(out))), expected, atol=1e-4, rtol=1e-4)
