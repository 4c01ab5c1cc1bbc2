"""FSDP without a GPU: Lightning's FSDP strategy on 2 CPU processes (gloo), through the command line.

``lightning_helpers.CPUFSDPStrategy`` only lets Lightning's ``FSDPStrategy`` run on CPU processes; the sharding,
the forward/backward with sharded adapters, the full state-dict checkpoints and their loading are Lightning's and
torch's own code. The oracle is DDP: both strategies train on the same global batches, so they must end with the
same adapters. ``tests/test_gpu.py`` runs the shipped ``configs/strategies/fsdp.yaml`` on CUDA where there is one.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning_helpers import MINILM, TINY_BERT
from safetensors.torch import load_file

from kasa_lightning import AdapterConfig, apply_adapters, unstack_adapters
from kasa_lightning.training.fsdp import AdapterWrapPolicy

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "transformers.models.bert.modeling_bert.BertLayer"
BACKBONE = TINY_BERT  # with dropout: the resumed run must draw the masks the uninterrupted one drew
FSDP = {
    "class_path": "lightning_helpers.CPUFSDPStrategy",
    "init_args": {
        "state_dict_type": "full",
        "auto_wrap_policy": {
            "class_path": "kasa_lightning.training.fsdp.AdapterWrapPolicy",
            "init_args": {"module_classes": [BLOCK]},
        },
    },
}
DDP = {"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"find_unused_parameters": False}}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    """A tiny BERT saved like a pretrained model, so that checkpoints hold the adapters only."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from kasa_lightning.hub import resolve_pretrained

    path = tmp_path_factory.mktemp("tiny-bert")
    cfg = dict(BACKBONE)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(
        path
    )
    AutoTokenizer.from_pretrained(resolve_pretrained(MINILM)).save_pretrained(path)
    return str(path)


def _fit(
    root: Path,
    strategy: dict,
    max_steps: int,
    backbone: str,
    ckpt_path: Path | None = None,
    stop_after: int = 0,
    expect_success: bool = True,
) -> Any:
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 2,
            "max_steps": max_steps,
            "strategy": strategy,
            "enable_progress_bar": False,
            "val_check_interval": 2,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 2, "save_top_k": -1},
                },
                {"class_path": "kasa_lightning.callbacks.SingularValueHeatmap"},
                {"class_path": "kasa_lightning.callbacks.RegularizerMonitor", "init_args": {"every_n_steps": 1}},
                {
                    "class_path": "kasa_lightning.callbacks.AdapterExport",
                    "init_args": {"formats": ["adapter"], "which": "last"},
                },
            ]
            + (
                [{"class_path": "lightning_helpers.StopAfter", "init_args": {"step": stop_after}}] if stop_after else []
            ),
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {
                "backbone": backbone,
                "gradient_checkpointing": True,
                "adapter": {"r": 4, "beta": 0.05, "gamma": 0.05},
            },
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 32, "val_size": 8, "batch_size": 4, "max_length": 32},
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(root / "cfg.yaml")]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", str(ckpt_path)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if not expect_success:
        return proc
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def _last(root: Path) -> dict:
    (ckpt,) = [p for p in root.rglob("last.ckpt")]
    return torch.load(ckpt, weights_only=True)


def test_wrap_policy_never_mixes_frozen_and_trainable_parameters():
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.bert.modeling_bert import BertLayer

    cfg = dict(TINY_BERT)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    apply_adapters(model, AdapterConfig(r=4, modules_to_save=["classifier"]))
    with pytest.raises(ValueError, match=r"stacked=False.*unstack_adapters"):  # stacked: one unit FSDP cannot run
        AdapterWrapPolicy([BertLayer]).units(model)
    unstack_adapters(model)
    units = AdapterWrapPolicy([BertLayer]).units(model)
    unit_ids = {id(u) for u in units} | {id(model)}

    def own_parameters(unit):  # the parameters FSDP flattens into this unit: not those of nested units
        stack, params = list(unit.children()), list(unit.parameters(recurse=False))
        while stack:
            m = stack.pop()
            if id(m) not in unit_ids:
                params += list(m.parameters(recurse=False))
                stack += list(m.children())
        return params

    for unit in [model, *units]:
        flags = {p.requires_grad for p in own_parameters(unit)}
        assert len(flags) <= 1, type(unit).__name__
    trainable_units = [u for u in units if any(p.requires_grad for p in own_parameters(u))]
    assert len(trainable_units) == 2 * 2 + 1  # (query, value) x 2 layers, and the classifier


@pytest.mark.slow
def test_fsdp_trains_like_ddp_checkpoints_adapters_only_and_resumes_exactly(tmp_path, backbone):
    ddp = _last(_fit(tmp_path / "ddp", DDP, 4, backbone))
    fsdp_root = _fit(tmp_path / "fsdp", FSDP, 4, backbone)
    fsdp = _last(fsdp_root)

    # adapter-only checkpoints, gathered to full tensors under the unwrapped names, equal to DDP's
    assert fsdp["state_dict"].keys() == ddp["state_dict"].keys()
    kinds = {k.rsplit(".", 1)[-1] for k in fsdp["state_dict"]}
    assert kinds == {"delta_u", "delta_v", "delta_sigma", "dropped_u", "dropped_v", "weight", "bias"}
    assert all(k.startswith("model.classifier.") for k in fsdp["state_dict"] if k.endswith(("weight", "bias")))
    trained = [k for k in ddp["state_dict"] if k.endswith(("delta_u", "delta_v", "delta_sigma"))]
    assert not any("_fsdp_wrapped_module" in k for k in fsdp["state_dict"])
    for k in ddp["state_dict"]:
        torch.testing.assert_close(fsdp["state_dict"][k], ddp["state_dict"][k], atol=2e-6, rtol=1e-5)

    # the callbacks saw whole tensors: the heatmap and the export equal the checkpoint
    (heat,) = sorted(fsdp_root.rglob("sigma_query_step0000004.npy"))
    sigma = [fsdp["state_dict"][f"model.bert.encoder.layer.{i}.attention.self.query.delta_sigma"] for i in range(2)]
    np.testing.assert_allclose(np.load(heat), torch.stack(sigma).numpy(), rtol=1e-6)
    (exported,) = fsdp_root.rglob("export/last/adapter/adapter.safetensors")
    for k, v in load_file(exported).items():
        torch.testing.assert_close(v, fsdp["state_dict"][f"model.{k}"])

    # stop after 2 of 4 steps (mid-epoch), resume from that checkpoint under FSDP: the same adapters as the
    # uninterrupted run (same optimiser, schedule and data position)
    half = _fit(tmp_path / "half", FSDP, 4, backbone, stop_after=2)
    at_2 = _last(half)
    assert at_2["global_step"] == 2 and not all(
        torch.equal(at_2["state_dict"][k], fsdp["state_dict"][k]) for k in trained
    )
    resumed = _last(_fit(tmp_path / "resumed", FSDP, 4, backbone, ckpt_path=next(half.rglob("last.ckpt"))))
    assert resumed["global_step"] == 4
    for k in fsdp["state_dict"]:
        torch.testing.assert_close(resumed["state_dict"][k], fsdp["state_dict"][k], atol=1e-7, rtol=1e-6)


def test_sharded_fsdp_checkpoints_are_refused_naming_the_setting(tmp_path, backbone):
    """``state_dict_type="sharded"`` folders are written past the atomic CheckpointIO: a real CLI fit with the
    CPU FSDP strategy stops before the first step with the setting named, and writes no checkpoint."""
    sharded = {**FSDP, "init_args": {**FSDP["init_args"], "state_dict_type": "sharded"}}
    root = tmp_path / "sharded"
    proc = _fit(root, sharded, 2, backbone, expect_success=False)
    assert proc.returncode != 0
    last_line = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert "trainer.strategy.init_args.state_dict_type='sharded' is not supported" in last_line, proc.stderr[-3000:]
    assert "state_dict_type full" in last_line
    assert not list(root.rglob("*.ckpt"))
