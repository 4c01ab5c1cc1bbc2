"""``--trainer.num_nodes 2`` as two "nodes" of one CPU process each on this machine.

Each node is started the way Lightning's general-purpose cluster setup starts one (``LightningEnvironment``):
the same command on every node with ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK`` set and no ``LOCAL_RANK``, so
each node's process is Lightning's launcher for its own devices (one here: it starts no child) and derives its
global rank as ``NODE_RANK x devices + local rank`` and the world size as ``num_nodes x devices``. The two nodes
meet over the loopback address (gloo). What makes this a node and not a device: the ranks are separate commands
that only share the rendezvous address, as on two machines; nothing here starts the other rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning_helpers import MINILM, TINY_BERT

TESTS = Path(__file__).resolve().parent


def _config(root: Path, max_steps: int, stop_after: int = 0) -> dict:
    """32 rows in micro-batches of 2 on 2 nodes with a global batch of 8: 2 accumulation steps, 4 optimiser steps
    an epoch. Dropout is on, so the resumed run must restore every rank's RNG to draw the same masks."""
    callbacks: list[dict] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "lightning_helpers.RecordStartStep", "init_args": {"path": str(root / "start_step")}},
    ]
    if stop_after:
        callbacks.append({"class_path": "lightning_helpers.StopAfter", "init_args": {"step": stop_after}})
    return {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "num_nodes": 2,
            "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"timeout": "0:02:00"}},
            "max_steps": max_steps,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 2, "dropout": 0.1}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 32, "val_size": 4, "batch_size": 2, "max_length": 32, "global_batch_size": 8},
        },
    }


def _start_two_nodes(tmp_path: Path, name: str, config: dict, ckpt_path: Path | None = None) -> list:
    """Start node 0 and node 1 (each ``python -m kasa_lightning fit``) on a rendezvous port of their own."""
    root = Path(config["trainer"]["default_root_dir"])
    root.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(cfg)]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", str(ckpt_path)]
    env = {
        k: v for k, v in os.environ.items() if k not in {"LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK"}
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(find_free_network_port()),
    )
    return [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


def _wait(name: str, nodes: list) -> None:
    """Wait for both nodes; both must succeed, and node 1 must have been global rank 1 of 2."""
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=240))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.communicate(timeout=30)
    for rank, (node, (_, err)) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank} of {name}: {err[-3000:]}"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1][1], outputs[1][1][-2000:]


def _last(root: Path, version: int = 0) -> dict:
    return torch.load(root / f"lightning_logs/version_{version}/checkpoints/last.ckpt", weights_only=True)


def test_two_nodes_fit_count_both_in_the_global_batch_and_resume_exactly(tmp_path):
    # the uninterrupted run and one stopped after 2 of 4 steps (mid-epoch), side by side to save time
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    both = [
        ("straight", _start_two_nodes(tmp_path, "straight", _config(straight, max_steps=4))),
        ("cut", _start_two_nodes(tmp_path, "cut", _config(cut, max_steps=4, stop_after=2))),
    ]
    for name, nodes in both:
        _wait(name, nodes)

    full = _last(straight)
    # the global batch of 8 = 2 per micro-batch x 2 processes (1 per node x 2 nodes) x 2 accumulation steps: 16 rows
    # per rank make 8 micro-batches, 4 optimiser steps (counting devices only, it would be 4 accumulation steps and 2)
    assert full["global_step"] == 4
    assert full["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 8
    assert full["SentimentDemoDataModule"]["world_size"] == 2

    half = _last(cut)
    assert half["global_step"] == 2 and half["SentimentDemoDataModule"]["batches"] == 4
    trained = [k for k in full["state_dict"] if k.endswith(("delta_u", "delta_v", "delta_sigma"))]
    assert trained and not all(torch.equal(half["state_dict"][k], full["state_dict"][k]) for k in trained)

    # resumed on two nodes: the adapters of the uninterrupted run
    last = cut / "lightning_logs/version_0/checkpoints/last.ckpt"
    _wait("resumed", _start_two_nodes(tmp_path, "resumed", _config(cut, max_steps=4), ckpt_path=last))
    assert (cut / "start_step").read_text() == "2"
    resumed = _last(cut, version=1)
    assert resumed["global_step"] == 4
    assert resumed["state_dict"].keys() == full["state_dict"].keys()
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, atol=1e-6, rtol=0, msg=k)
