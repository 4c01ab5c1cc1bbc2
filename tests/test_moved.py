"""Old module paths (from before ``training/`` and ``experiments/``) keep working: in code, in YAML class paths and
in the ``_class_path`` that a CLI-written checkpoint stores, so checkpoints saved by the previous layout load."""

from __future__ import annotations

import subprocess
import sys
import warnings

import lightning as L
import pytest
import torch
from lightning_helpers import tiny_data, tiny_module

from kasa_lightning import AdapterConfig, KaSAModule, load_adapter_state_dict
from kasa_lightning._moved import MOVED
from kasa_lightning.cli import main


def test_every_old_path_imports_as_the_new_module_with_a_warning():
    """In a fresh process (nothing imported yet): each old path is the new module object, named by its new path."""
    code = (
        "import importlib, warnings\n"
        "from kasa_lightning._moved import MOVED\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    assert module is importlib.import_module(new), old\n"
        "    assert module.__name__ == module.__spec__.name == new, old\n"
        "    assert any(w.category is FutureWarning and new in str(w.message) for w in seen), old\n"
        "print(len(MOVED))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(len(MOVED))


def test_old_yaml_class_path_resolves():
    from jsonargparse import ArgumentParser

    from kasa_lightning.training.fsdp import AdapterWrapPolicy

    parser = ArgumentParser()
    parser.add_argument("--policy", type=AdapterWrapPolicy)
    with pytest.warns(FutureWarning, match="kasa_lightning.training.fsdp"):
        config = parser.parse_args(
            ['--policy={"class_path": "kasa_lightning.fsdp.AdapterWrapPolicy", "init_args": {"module_classes": []}}']
        )
    assert isinstance(parser.instantiate_classes(config).policy, AdapterWrapPolicy)


def test_a_checkpoint_naming_the_old_module_path_loads_and_exports(tmp_path):
    """A checkpoint as the previous layout's CLI wrote it: ``_class_path: kasa_lightning.module.KaSAModule`` and
    Lightning's instantiator in its hyperparameters (what ``LightningCLI`` stores, see ``_InstantiatorFn``)."""
    torch.manual_seed(0)
    module = tiny_module(adapter=AdapterConfig(r=4, target_modules=["query", "value"]))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, tiny_data(train_size=16))
    new = tmp_path / "new.ckpt"
    trainer.save_checkpoint(new)
    checkpoint = torch.load(new, weights_only=True, map_location="cpu")
    checkpoint["hyper_parameters"]["_class_path"] = "kasa_lightning.module.KaSAModule"
    checkpoint["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old path's warning (in a fresh process it is raised)
        loaded = KaSAModule.load_from_checkpoint(old, map_location="cpu")
    assert type(loaded) is KaSAModule
    trained = {k: v for k, v in module.state_dict().items() if "delta_" in k}
    assert trained and all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())

    out = tmp_path / "adapter"
    main(["export", "--ckpt_path", str(old), "--format", "adapter", "--output_dir", str(out)])
    exported = tiny_module(adapter=AdapterConfig(r=4, target_modules=["query", "value"]))
    exported.configure_model(initialize=False)
    load_adapter_state_dict(exported.model, str(out / "adapter.safetensors"))
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in trained.items())
    assert set(MOVED["kasa_lightning.module"].split(".")) >= {"training", "module"}
