"""``SingularValueHeatmap``: the learned singular values dsigma as a (layers x r) heatmap per target type, the
paper's Figure 4, logged to TensorBoard as an image and saved as PNG (plus the matrix as ``.npy``) under
``<log_dir>/heatmaps/``, at every validation end and at the end of fit (so a run stopped by ``max_steps`` has
one). With ``spectrum=True`` it also draws the singular values of each layer's merged update
eta dU diag(dsigma) dV^T (for every method, also those without dsigma).

dsigma is signed, so its map is diverging and centred at 0 (``RdBu_r``: red above 0, blue below, white at 0); the
spectrum is non-negative and uses ``viridis``. Both colour bars say what they measure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from kasa_lightning.kasa import layer_groups


def sigma_matrices(model: torch.nn.Module, spectrum: bool = False) -> dict[str, np.ndarray]:
    """{target type: (layers, r) array}: dsigma of each layer (rows in depth order), or with ``spectrum`` the
    top-r singular values of each layer's update."""
    out = {}
    for kind, layers in layer_groups(model).items():
        rows = []
        for _, layer in layers:
            if spectrum:
                rows.append(torch.linalg.svdvals(layer.delta_weight().detach())[: layer.r].cpu().numpy())
            elif layer.delta_sigma is not None:
                # a copy: a numpy view would pin the parameter's storage, which FSDP frees and re-fills
                rows.append(layer.delta_sigma.detach().to("cpu", torch.float32, copy=True).numpy())
        if rows:
            out[kind] = np.stack(rows)
    return out


def heatmap_figure(matrix: np.ndarray, title: str, signed: bool = True, label: str = "dsigma") -> Any:
    """The matplotlib figure of ``matrix`` (layers x r) with a labelled colour bar. ``signed``: a diverging map
    (``RdBu_r``) with limits symmetric about 0, so 0 is its neutral centre and the sign reads as red or blue (dsigma
    moves singular values either way); otherwise the sequential ``viridis`` (non-negative values such as singular
    values). The caller closes the figure (``matplotlib.pyplot.close``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    layers, r = matrix.shape
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * r, 1.2 + 0.35 * layers), dpi=100)
    if signed:
        limit = float(np.nanmax(np.abs(matrix))) if matrix.size else 0.0
        limit = limit if np.isfinite(limit) and limit > 0 else 1.0  # all zero: any symmetric range shows it as 0
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", norm=Normalize(-limit, limit))
    else:
        image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("layer")
    ax.set_xticks(range(r))
    ax.set_yticks(range(layers))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return fig


def render_heatmap(
    matrix: np.ndarray, title: str, path: Path, signed: bool = True, label: str = "dsigma"
) -> np.ndarray:
    """Draw ``matrix`` (layers x r) as ``heatmap_figure`` does, write the PNG to ``path``, return the image as HWC
    uint8."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(matrix, title, signed, label)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]  # Agg's canvas
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return rgba


class SingularValueHeatmap(L.Callback):
    """Logs and saves the dsigma heatmaps (and optionally the update spectra)."""

    def __init__(self, spectrum: bool = False, dirname: str = "heatmaps") -> None:
        self.spectrum = spectrum
        self.dirname = dirname

    def _directory(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / self.dirname

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Path]:
        model: nn.Module | None = getattr(pl_module, "model", None)  # the adapted model of a KaSAModule
        if model is None:
            return []
        directory = self._directory(trainer)  # on every rank: trainer.log_dir is a broadcast under DDP/FSDP
        gather = getattr(pl_module, "whole_parameters", contextlib.nullcontext)
        with gather():  # under FSDP: gathers the shards to rank 0 (a collective, so every rank enters)
            if not trainer.is_global_zero:
                return []
            kinds = {"sigma": sigma_matrices(model)}
            if self.spectrum:
                kinds["spectrum"] = sigma_matrices(model, spectrum=True)
        step, written = trainer.global_step, []
        for what, matrices in kinds.items():
            for kind, matrix in matrices.items():
                path = directory / f"{what}_{kind}_step{step:07d}.png"
                title = f"{'learned dsigma' if what == 'sigma' else 'update spectrum'} of {kind} (step {step})"
                if what == "sigma":
                    rgb = render_heatmap(matrix, title, path)
                else:
                    rgb = render_heatmap(matrix, title, path, signed=False, label="singular value of the update")
                np.save(path.with_suffix(".npy"), matrix)
                for logger in trainer.loggers:
                    experiment = getattr(logger, "experiment", None)
                    if experiment is not None and hasattr(experiment, "add_image"):
                        experiment.add_image(f"kasa/{what}/{kind}", rgb, global_step=step, dataformats="HWC")
                written.append(path)
        return written

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.draw(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer, pl_module)
