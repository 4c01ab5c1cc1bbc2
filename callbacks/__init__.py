"""Lightning callbacks of kasa-lightning, installed as ``kasa_lightning.callbacks``.

Import them as ``kasa_lightning.callbacks`` only, never as a bare ``callbacks`` package.
"""

from kasa_lightning.callbacks.adapter_export import AdapterExport
from kasa_lightning.callbacks.heatmaps import SingularValueHeatmap, heatmap_figure, render_heatmap, sigma_matrices
from kasa_lightning.callbacks.metrics_file import MetricsFile
from kasa_lightning.callbacks.predictions import JsonlPredictionWriter
from kasa_lightning.callbacks.regularizers import RegularizerMonitor, regularizer_scalars
from kasa_lightning.training._stop import StopCheckpoint

__all__ = [
    "AdapterExport",
    "JsonlPredictionWriter",
    "MetricsFile",
    "RegularizerMonitor",
    "SingularValueHeatmap",
    "StopCheckpoint",
    "heatmap_figure",
    "regularizer_scalars",
    "render_heatmap",
    "sigma_matrices",
]
