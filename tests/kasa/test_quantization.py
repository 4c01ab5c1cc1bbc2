"""Bad input on quantised bases, bitsandbytes missing, and a quiet, offline bitsandbytes (fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kasa_lightning.kasa import AdapterConfig, QuantizationConfig, apply_adapters

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"bits": 3}, r"quantization\.bits=3 .*choose bits: 4 or bits: 8"),
        ({"bits": 8, "quant_type": "fp4"}, r"quantization\.quant_type='fp4' .*4-bit code book"),
        ({"bits": 8, "double_quant": True}, r"quantization\.double_quant=True"),
        ({"quant_type": "int4"}, r"quantization\.quant_type='int4'"),
        ({"compute_dtype": "float64"}, r"quantization\.compute_dtype='float64'"),
    ],
)
def test_bad_quantization_settings(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantizationConfig(**settings)


def test_bad_quantized_source() -> None:
    with pytest.raises(ValueError, match=r"AdapterConfig\.quantized_source='disk'"):
        AdapterConfig(quantized_source="disk")  # type: ignore[arg-type]


def test_maps_onto_bitsandbytes_config() -> None:
    pytest.importorskip("bitsandbytes")
    import torch

    nf4 = QuantizationConfig(
        bits=4, quant_type="fp4", double_quant=True, compute_dtype="bfloat16"
    ).to_bitsandbytes_config()
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "fp4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert QuantizationConfig(bits=8).to_bitsandbytes_config().load_in_8bit


def test_original_source_needs_the_checkpoint_files(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    import shutil

    from quantized_helpers import load_quantized, save_tiny_llama

    folder = save_tiny_llama(tmp_path / "m")
    model = load_quantized(folder, 4)
    shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match=r"quantized_source.*'dequantized'"):
        apply_adapters(model, AdapterConfig(method="kasa", r=4, target_modules=["q_proj"]))
    assert not any("Adapted" in type(m).__name__ for m in model.modules())  # nothing changed
    apply_adapters(model, AdapterConfig(method="kasa", r=4, target_modules=["q_proj"], quantized_source="dequantized"))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=240
    )


def test_bitsandbytes_missing_names_the_extra() -> None:
    code = """
        import sys
        sys.modules["bitsandbytes"] = None  # what an environment without bitsandbytes gives: import fails
        from kasa_lightning.kasa import QuantizationConfig
        try:
            QuantizationConfig(bits=4).to_bitsandbytes_config()
        except ImportError as err:
            print("ERROR:", err)
        """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert "ERROR: quantised bases need bitsandbytes" in out.stdout
    assert 'pip install -e ".[quant]"' in out.stdout


def test_offline_and_quiet(tmp_path: Path) -> None:
    """Online settings (no HF_HUB_OFFLINE), every socket refused and recorded: loading a 4-bit and an 8-bit model,
    applying KaSA and a training step make no connection attempt and print no bitsandbytes warning."""
    pytest.importorskip("bitsandbytes")
    from quantized_helpers import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "m")
    code = f"""
        import socket, sys, time
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(args[:2])
            raise OSError("network blocked in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        start = time.perf_counter()
        from quantized_helpers import load_quantized, train
        from kasa_lightning.kasa import AdapterConfig, apply_adapters
        for bits in (4, 8):
            model = load_quantized({str(folder)!r}, bits)
            apply_adapters(model, AdapterConfig(method="kasa", r=4, target_modules=["q_proj", "v_proj"]))
            train(model, 1)
        print("ATTEMPTS", attempts)
        print("SECONDS", time.perf_counter() - start)
        """
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert "ATTEMPTS []" in out.stdout, out.stdout
    for noise in ("kernels-community", "MatMul8bitLt", "Warning", "warn"):
        assert noise not in out.stderr, out.stderr
