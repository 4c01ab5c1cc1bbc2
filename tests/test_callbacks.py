"""Dashboards: regulariser curves and singular-value heatmaps read back from the TensorBoard event files."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import tiny_data, tiny_module
from PIL import Image

from kasa_lightning import adapter_loss
from kasa_lightning.callbacks import AdapterExport, RegularizerMonitor, SingularValueHeatmap, sigma_matrices


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture
def fitted(tmp_path):
    L.seed_everything(0)
    module = tiny_module()
    logger = TensorBoardLogger(tmp_path, name="tb")
    heat = SingularValueHeatmap(spectrum=True)
    t = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=6,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[
            RegularizerMonitor(every_n_steps=2),
            heat,
            ModelCheckpoint(monitor="val/accuracy", mode="max"),
            AdapterExport(formats=["peft-lora", "adapter"], which="best"),
        ],
        val_check_interval=3,
    )
    t.fit(module, tiny_data())
    return t, module


def test_regulariser_scalars_match_the_parameters(fitted):
    t, module = fitted
    acc = _events(t.log_dir)
    tags = set(acc.Tags()["scalars"])
    for kind in ("query", "value"):
        assert {f"kasa/l2/{kind}", f"kasa/l3/{kind}", f"kasa/l2_layer/{kind}/00", f"kasa/l3_layer/{kind}/01"} <= tags
    assert {"kasa/loss", "kasa/reg_loss"} <= tags
    steps = [e.step for e in acc.Scalars("kasa/l2/query")]
    assert steps == [2, 4, 6]  # every_n_steps=2
    terms = adapter_loss(module.model, per_layer=True)  # the model now = the parameters at step 6
    names = [n for n in terms.per_layer if n.endswith("query")]
    expected_l2 = sum(float(terms.per_layer[n].l2) for n in names)
    expected_l3 = float(terms.per_layer[names[1]].l3)
    assert acc.Scalars("kasa/l2/query")[-1].value == pytest.approx(expected_l2, rel=1e-5)
    assert acc.Scalars("kasa/l3_layer/query/01")[-1].value == pytest.approx(expected_l3, rel=1e-5)
    assert acc.Scalars("kasa/reg_loss")[-1].value == pytest.approx(float(terms.loss), rel=1e-5)


def test_heatmaps_are_logged_and_saved_with_the_layer_grid(fitted):
    t, module = fitted
    acc = _events(t.log_dir)
    images = set(acc.Tags()["images"])
    assert {"kasa/sigma/query", "kasa/sigma/value", "kasa/spectrum/query"} <= images
    steps = sorted({e.step for e in acc.Images("kasa/sigma/query")})
    assert steps == [3, 6]  # validation at steps 3 and 6, fit end at 6
    directory = t.log_dir + "/heatmaps"
    png = f"{directory}/sigma_query_step0000006.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    matrix = np.load(png.replace(".png", ".npy"))
    assert matrix.shape == (2, 8)  # 2 layers x r = 8
    np.testing.assert_allclose(matrix, sigma_matrices(module.model)["query"])
    expected = torch.stack(
        [
            layer.delta_sigma.detach()
            for name, layer in ((n, m) for n, m in module.model.named_modules() if n.endswith("self.query"))
        ]
    )
    np.testing.assert_allclose(matrix, expected.numpy(), rtol=1e-6)
    spectrum = np.load(f"{directory}/spectrum_query_step0000006.npy")
    assert spectrum.shape == (2, 8) and (np.diff(spectrum, axis=1) <= 1e-6).all()  # singular values descend


def test_best_adapter_is_exported(fitted):
    t, module = fitted
    root = t.log_dir + "/export/best"
    config = json.loads(open(f"{root}/peft-lora/adapter_config.json").read())
    assert config["r"] == 16  # rank 2r: the removed minor part and the learned update
    assert t.log_dir and __import__("os").path.exists(f"{root}/adapter/adapter.safetensors")


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps"):
        RegularizerMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="formats"):
        AdapterExport(formats=["onnx"])


def test_an_unreadable_metrics_file_is_kept_aside_not_overwritten(tmp_path):
    """A damaged metrics.json holds a run's history: the next write keeps it under another name and says so,
    instead of silently starting an empty file over it."""
    from kasa_lightning.callbacks.metrics_file import read_for_update

    path = tmp_path / "metrics.json"
    assert read_for_update(path) == {}  # no file yet
    path.write_text(json.dumps({"format": 1, "fit": {"global_step": 3}}))
    assert read_for_update(path)["fit"]["global_step"] == 3
    damaged = '{"format": 1, "fit": {"epochs": [{"epoch": 0'  # cut off mid-write by a full disk
    path.write_text(damaged)
    with pytest.warns(UserWarning, match="unreadable"):
        assert read_for_update(path) == {}
    kept = list(tmp_path.glob("metrics.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == damaged
    assert not path.exists()  # the caller writes a new one
