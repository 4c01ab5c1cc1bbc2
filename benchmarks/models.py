"""Tiny BERT configs (built in code, no download) shared by the benchmarks' smoke and tiny runs."""

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

# A 2-layer BERT with a 1000-token vocabulary fed random ids: the `--smoke` case of train_step and inference.
SMOKE_BERT = {**TINY_BERT, "vocab_size": 1000, "max_position_embeddings": 64}
