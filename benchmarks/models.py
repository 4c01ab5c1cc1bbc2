"""Tiny models built from configs in code, shared by the benchmarks that run the CLI at smoke sizes."""

from __future__ import annotations

# A 2-layer BERT with BERT's vocabulary (it takes the MiniLM tokenizer's ids): `kill_soak --tiny`, `quality --smoke`.
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
