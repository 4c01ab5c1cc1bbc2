"""The truncation's progress bar: a tqdm bar over the target weights with their count and the
disk-cache hits; quiet when stderr is not a terminal (tests, CI, redirected runs) unless forced."""

import io
import sys

import torch
from conftest import TinyMLP

from kasa_lightning import AdapterConfig, apply_adapters


def _model() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


def test_quiet_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    stream = io.StringIO()  # isatty() is False, as for a log file or a pipe
    monkeypatch.setattr(sys, "stderr", stream)
    apply_adapters(_model(), AdapterConfig(r=2, target_modules=["fc1", "fc2"]))  # progress=None: tqdm decides
    assert stream.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_forced_bar_counts_weights_and_cache_hits(tmp_path, monkeypatch):
    cfg = AdapterConfig(r=2, target_modules=["fc1", "fc2", "head"], svd_cache_dir=str(tmp_path / "svd"))
    for expected_hits in (0, 3):  # the second run reads all three truncations from the disk cache
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        apply_adapters(_model(), cfg, progress=True)
        out = stream.getvalue()
        assert "kasa truncation" in out and "3/3" in out, out
        assert f"cache hits {expected_hits}" in out, out
    # LoRA truncates nothing: no bar even when forced
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    apply_adapters(_model(), AdapterConfig(method="lora", r=2, target_modules=["fc1"]), progress=True)
    assert stream.getvalue() == ""


def test_svd_device_gives_the_same_truncation():
    """``svd_device`` only moves the computation: same removed part, adapters on the weights' device."""
    a = apply_adapters(_model(), AdapterConfig(r=2, target_modules=["fc1"]))
    b = apply_adapters(_model(), AdapterConfig(r=2, target_modules=["fc1"]), svd_device="cpu")
    torch.testing.assert_close(a.fc1.base_layer.weight, b.fc1.base_layer.weight)
    torch.testing.assert_close(a.fc1.dropped_u, b.fc1.dropped_u)
