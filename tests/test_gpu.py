"""GPU-only checks (skipped without CUDA): FSDP with a tiny LLaMA and adapter-only checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning_helpers import MINILM

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


def test_fsdp_tiny_llama_trains_and_checkpoints_adapters_only(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from kasa_lightning.hub import resolve_pretrained

    backbone = tmp_path / "tiny-llama"
    cfg = LlamaConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        num_labels=2,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(backbone)
    AutoTokenizer.from_pretrained(resolve_pretrained(MINILM)).save_pretrained(backbone)
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "devices": 1,
            "max_steps": 4,
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
            ],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": str(backbone), "adapter": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 64, "val_size": 16, "batch_size": 8, "max_length": 32},
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kasa_lightning",
            "fit",
            "--config",
            str(tmp_path / "cfg.yaml"),
            "--config",
            str(ROOT / "configs/strategies/fsdp.yaml"),
        ],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state and all(
        k.split(".")[-1] in {"delta_u", "delta_sigma", "delta_v", "dropped_u", "dropped_v", "weight", "bias"}
        for k in state
    )
    assert not any("embed_tokens" in k or "base_layer" in k for k in state)
    assert all(v.numel() > 0 for v in state.values())  # gathered full tensors, not empty shards
    from kasa_lightning import KaSAModule

    module = KaSAModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert any(k.endswith("delta_sigma") for k in state) and module.model is not None


def test_fit_on_gpu_truncates_on_the_gpu(tmp_path, monkeypatch):
    """Single device: configure_model runs under the root device, so every SVD of the truncation sees a CUDA weight."""
    import lightning as L
    from lightning_helpers import tiny_data, tiny_module

    from kasa_lightning.kasa import inject

    devices = []
    original = inject.extreme_triplets

    def recording(weight, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        devices.append(weight.device.type)
        return original(weight, *args, **kwargs)

    monkeypatch.setattr(inject, "extreme_triplets", recording)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(tiny_module(), datamodule=tiny_data())
    assert devices and set(devices) == {"cuda"}, devices
