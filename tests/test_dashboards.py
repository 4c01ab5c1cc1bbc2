"""TensorBoard views: the custom-scalars layout read back from a real run's event file, and the dsigma heatmap's
diverging colour map (centre colour at 0, checked on the saved PNG's pixels)."""

from __future__ import annotations

import re

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import tiny_data, tiny_module
from PIL import Image

from kasa_lightning.callbacks import RegularizerMonitor, heatmap_figure, render_heatmap
from kasa_lightning.callbacks.scalar_layout import PER_LAYER, TOTALS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    L.seed_everything(0)
    trainer = L.Trainer(
        default_root_dir=tmp,
        accelerator="cpu",
        max_steps=2,
        logger=TensorBoardLogger(tmp, name="tb"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[RegularizerMonitor(every_n_steps=1)],
    )
    trainer.fit(tiny_module(), tiny_data())
    return trainer.log_dir


def test_custom_scalars_layout_has_one_chart_per_term_and_type_with_every_layer(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    events = acc.Tensors("custom_scalars__config__")
    assert len(events) == 1
    layout = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    charts = {
        (category.title, chart.title): list(chart.multiline.tag)
        for category in layout.category
        for chart in category.chart
    }
    per_layer = {title: tags for (category, title), tags in charts.items() if category == PER_LAYER}
    assert sorted(per_layer) == [
        "L2 per layer: query",
        "L2 per layer: value",
        "L3 per layer: query",
        "L3 per layer: value",
    ]

    logged = set(acc.Tags()["scalars"])
    layer_tags = sorted(t for t in logged if re.fullmatch(r"kasa/l[23]_layer/\w+/\d+", t))
    assert len(layer_tags) == 8  # 2 terms x 2 types x 2 layers of the tiny BERT
    for tag in layer_tags:  # TensorBoard's plugin selects a chart's lines with re.match on the logged tags
        holders = [title for title, regexes in per_layer.items() if any(re.match(rx, tag) for rx in regexes)]
        _, term, kind, _ = re.split(r"/|_layer/", tag)
        assert holders == [f"{term.upper()} per layer: {kind}"], tag
    for title, regexes in per_layer.items():  # every chart holds both layers of its type, nothing else
        held = [t for t in logged if any(re.match(rx, t) for rx in regexes)]
        assert len(held) == 2, (title, held)

    totals = {title: tags for (category, title), tags in charts.items() if category == TOTALS}
    held = {
        title: sorted(t for t in logged if any(re.match(rx, t) for rx in rx_list)) for title, rx_list in totals.items()
    }
    assert held == {
        "L2 per target type": ["kasa/l2/query", "kasa/l2/value"],
        "L3 per target type": ["kasa/l3/query", "kasa/l3/value"],
        "loss": ["kasa/loss", "kasa/reg_loss"],
    }


def test_dsigma_heatmap_is_diverging_and_centred_at_zero(tmp_path):
    import matplotlib.pyplot as plt

    matrix = np.array([[0.0, 0.5, -0.25, 1.0], [-1.0, 0.0, 0.3, 0.0]])
    fig = heatmap_figure(matrix, "dsigma", signed=True, label="dsigma")
    try:
        ax = fig.axes[0]
        image = ax.images[0]
        assert image.get_cmap().name == "RdBu_r"
        assert image.norm(0.0) == pytest.approx(0.5) and image.norm.vmin == -image.norm.vmax == -1.0
        assert fig.axes[1].get_ylabel() == "dsigma"  # the colour bar's label
        fig.canvas.draw()
        height = fig.canvas.get_width_height()[1]
        centres = {(row, col): ax.transData.transform((col, row)) for row in range(2) for col in range(4)}
    finally:
        plt.close(fig)

    path = tmp_path / "sigma.png"
    render_heatmap(matrix, "dsigma", path)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    cmap = image.get_cmap()
    white = np.round(np.array(cmap(0.5)[:3]) * 255)
    for (row, col), (x, y) in centres.items():  # display coordinates: origin bottom left
        colour = pixels[int(round(height - y)), int(round(x))]
        if matrix[row, col] == 0.0:
            assert np.abs(colour - white).max() <= 2, (row, col, colour)
        else:
            expected = np.round(np.array(cmap(0.5 + 0.5 * matrix[row, col])[:3]) * 255)
            assert np.abs(colour - expected).max() <= 3, (row, col, colour, expected)
    assert tuple(pixels[int(round(height - centres[(0, 3)][1])), int(round(centres[(0, 3)][0]))]) != tuple(
        pixels[int(round(height - centres[(1, 0)][1])), int(round(centres[(1, 0)][0]))]
    )  # +1 and -1 are the map's two ends, not one colour


def test_spectrum_heatmap_stays_sequential():
    import matplotlib.pyplot as plt

    fig = heatmap_figure(np.array([[3.0, 2.0], [1.0, 0.5]]), "spectrum", signed=False, label="singular value")
    try:
        assert fig.axes[0].images[0].get_cmap().name == "viridis"
        assert fig.axes[1].get_ylabel() == "singular value"
    finally:
        plt.close(fig)
