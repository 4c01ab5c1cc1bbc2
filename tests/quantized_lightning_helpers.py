"""Tiny pretrained folders (model + tokenizer) for the Lightning tests on a quantised base: ``from_pretrained`` is
the only way to a bitsandbytes base, so these tests need real saved checkpoints, not ``backbone_config``."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def byte_tokenizer():  # noqa: ANN201
    """A small byte-level BPE with eos / pad tokens (about 300 entries)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = ["<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue, or red.<|im_end|>\n"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>")


def save_tiny_causal(folder: Path, seed: int = 0) -> Path:
    """A 2-layer LLaMA (hidden 64) with its tokenizer, saved as safetensors to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_alpaca(path: Path, rows: int = 24) -> Path:
    """Alpaca-format rows (instruction, input, output)."""
    colours = ["blue", "red", "green", "black"]
    data = [
        {"instruction": f"Name colour number {i}.", "input": "", "output": f"{colours[i % 4].title()}, or red."}
        for i in range(rows)
    ]
    path.write_text(json.dumps(data))
    return path


def instruct_data(tokenizer: str, train_path: Path, **kwargs):  # noqa: ANN003, ANN201
    from kasa_lightning.datamodules.instruct import InstructionDataModule

    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("max_length", 64)
    return InstructionDataModule(source="alpaca", train_path=str(train_path), tokenizer=tokenizer, **kwargs)
