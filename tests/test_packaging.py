"""The asked-for layout installs as kasa_lightning.{callbacks,datamodules}, never as bare top-level packages."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_mapped_packages_only(tmp_path):
    pytest.importorskip("build")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("kasa_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kasa_lightning/callbacks/__init__.py" in names
    assert "kasa_lightning/datamodules/__init__.py" in names
    assert "kasa_lightning/kasa/layer.py" in names
    assert (
        "kasa_lightning/experiments/paper/paper_hyperparameters.json" in names
    )  # read by kasa_lightning.experiments.paper.hyperparameters
    assert (
        "kasa_lightning/experiments/paper/paper_results.json" in names
    )  # read by kasa_lightning.experiments.paper.results (the report)
    tops = {n.split("/")[0] for n in names}
    assert "callbacks" not in tops and "datamodules" not in tops and "tests" not in tops
    # import from the unpacked wheel alone, outside the repository
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import kasa_lightning.callbacks as c, kasa_lightning.datamodules as d, importlib.util as u;"
        f"assert c.__file__.startswith({str(site)!r}), c.__file__;"
        "assert u.find_spec('callbacks') is None and u.find_spec('datamodules') is None;"
        "from kasa_lightning import AdapterConfig, apply_adapters, adapter_loss, export_peft;"
        "from kasa_lightning.experiments.paper.results import lookup;"
        "assert lookup('roberta-base', 'rte', 'kasa', 'accuracy').value == 81.6"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


def test_editable_install_imports_under_package_names():
    import importlib.util

    import kasa_lightning.callbacks
    import kasa_lightning.datamodules

    # the files of the top-level folders (reached directly or through the links kasa_lightning/callbacks, ...)
    assert Path(kasa_lightning.callbacks.__file__).resolve().parent == ROOT / "callbacks"
    assert Path(kasa_lightning.datamodules.__file__).resolve().parent == ROOT / "datamodules"
    assert importlib.util.find_spec("kasa_lightning.kasa") is not None


LIGHTNING_FREE = """
import sys
import torch
from transformers import BertConfig, BertForSequenceClassification
import kasa_lightning.kasa
from kasa_lightning import AdapterConfig, adapter_loss, apply_adapters, export_peft
from kasa_lightning.datamodules.synthetic import make_sentiment_examples

torch.manual_seed(0)
cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
model = BertForSequenceClassification(cfg)
apply_adapters(model, AdapterConfig(r=2, target_modules=["query", "value"]))
out = model(input_ids=torch.randint(0, 64, (2, 5)), labels=torch.tensor([0, 1]))
(out.loss + adapter_loss(model)).backward()
export_peft(model, sys.argv[1])
make_sentiment_examples(4, seed=0)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"))
print("LOADED", loaded)
"""


def test_method_package_does_not_import_lightning(tmp_path):
    """In a fresh process: the method package, its top-level re-exports and the synthetic data, used for real
    (adapters applied, loss backpropagated, a PEFT export written), leave Lightning unimported."""
    done = subprocess.run(
        [sys.executable, "-c", LIGHTNING_FREE, str(tmp_path / "peft")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    assert "LOADED []" in done.stdout, done.stdout


def test_lazy_exports_resolve_to_the_real_objects():
    import kasa_lightning
    import kasa_lightning.datamodules as dm
    from kasa_lightning.datamodules.glue import GLUEDataModule
    from kasa_lightning.kasa import apply_adapters
    from kasa_lightning.training.module import KaSAModule

    assert kasa_lightning.KaSAModule is KaSAModule and kasa_lightning.apply_adapters is apply_adapters
    assert dm.GLUEDataModule is GLUEDataModule
    assert set(kasa_lightning.__all__) <= set(dir(kasa_lightning))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kasa_lightning.nope  # noqa: B018
