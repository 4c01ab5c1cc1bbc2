"""Shared by the lm-evaluation-harness tests: a tiny LLaMA with a word-level tokenizer saved to a folder with two
local tasks, the log-likelihood ranking computed with plain torch, and a brief training run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
COLORS = ["red", "green", "blue", "yellow", "black", "white", "pink", "brown"]
ANIMALS = ["cat", "dog", "bird", "fish", "cow", "horse", "sheep", "goat"]
TARGETS = ["q_proj", "v_proj"]
MODEL_ARGS = [
    "--model.task",
    "causal_lm",
    "--model.adapter.method",
    "kasa",
    "--model.adapter.r",
    "24",
    "--model.adapter.target_modules",
    "[q_proj,v_proj]",
]


def make_docs(n: int = 12) -> list[dict]:
    rng = random.Random(0)
    docs = []
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        docs.append(
            {"question": f"what color is the {animal} ?", "choices": rng.sample(COLORS, 4), "label": rng.randrange(4)}
        )
    return docs


def context(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def build(root: Path) -> dict:
    """A tiny LLaMA with a word-level tokenizer in ``model/``, the tasks ``tiny_colors`` (multiple choice) and
    ``tiny_gen`` (generate_until) in ``tasks/`` with their JSONL data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    docs = make_docs()
    words = sorted(
        {w for d in docs for w in d["question"].split()} | set(COLORS) | set(ANIMALS) | {"Question", ":", "Answer"}
    )
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "colors.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "colors.yaml").write_text(
        "task: tiny_colors\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'colors.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    gen = [{"question": d["question"], "answer": d["choices"][d["label"]]} for d in docs[:4]]
    (tasks / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    (tasks / "gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'gen.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n  until: ['</s>']\n  max_gen_toks: 1\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 2.0\n"
    )
    return {"root": root, "model": model_dir, "tasks": tasks, "docs": docs, "gen": gen}


def adapted_module(model_dir: Path, seed: int = 0, **adapter):
    from lightning.pytorch import seed_everything

    from kasa_lightning import AdapterConfig, KaSAModule

    seed_everything(seed)
    config = AdapterConfig(method="kasa", r=24, target_modules=TARGETS, **adapter)
    module = KaSAModule(backbone=str(model_dir), task="causal_lm", adapter=config)
    module.configure_model()
    return module.eval()


def loglikelihoods(model, tokenizer, docs: list[dict]) -> list[list[float]]:
    """Per document and choice: sum of log p(continuation token | everything before it), the continuation being
    " <choice>" after the context, split off the whole encoding at the context's length (as lm-eval does)."""
    out = []
    model.eval()
    with torch.no_grad():
        for doc in docs:
            text = context(doc)
            row = []
            for choice in doc["choices"]:
                whole = tokenizer.encode(text + " " + choice)
                prefix = tokenizer.encode(text)
                assert whole[: len(prefix)] == prefix
                ids = torch.tensor([whole])
                logp = torch.log_softmax(model(ids[:, :-1]).logits.float(), dim=-1)[0]
                row.append(sum(logp[len(prefix) - 1 + i, tok].item() for i, tok in enumerate(whole[len(prefix) :])))
            out.append(row)
    return out


def accuracy(lls: list[list[float]], docs: list[dict]) -> float:
    picks = [max(range(len(row)), key=row.__getitem__) for row in lls]
    return sum(p == d["label"] for p, d in zip(picks, docs)) / len(docs)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def run_eval(args: list[str]) -> dict:
    """The eval command in this process, on the CPU (the checks here compute on the CPU)."""
    from kasa_lightning.harness import run

    return run([*args, "--device", "cpu"])


def train_briefly(model_dir: Path, docs: list[dict], ckpt: Path, num_labels: int = 2) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from kasa_lightning import AdapterConfig, KaSAModule

    L.seed_everything(0)
    tokenizer = load_tokenizer(model_dir)
    rows = []
    for doc in docs:
        prompt = tokenizer.encode(context(doc))
        ids = tokenizer.encode(context(doc) + " " + doc["choices"][doc["label"]])
        labels = [-100] * len(prompt) + ids[len(prompt) :]
        rows.append(
            {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids)), "labels": torch.tensor(labels)}
        )
    module = KaSAModule(
        backbone=str(model_dir),
        task="causal_lm",
        num_labels=num_labels,
        adapter=AdapterConfig(method="kasa", r=24, target_modules=TARGETS),
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.05),
    )
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(rows, batch_size=len(rows)))
    trainer.save_checkpoint(ckpt)


def commonsense_config(tmp: Path, model_dir: Path, **trainer) -> Path:
    """A commonsense config for the tiny LLaMA (KaSA r=24 on q_proj, v_proj); ``trainer``: more Trainer settings."""
    row = {"instruction": "what color is the cat ?", "input": "", "output": "red", "answer": "red"}
    (tmp / "train.json").write_text(json.dumps([row] * 6))
    (tmp / "test" / "boolq").mkdir(parents=True)
    (tmp / "test" / "boolq" / "test.json").write_text(json.dumps([row]))
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, **trainer},
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {
                "backbone": str(model_dir),
                "adapter": {"method": "kasa", "r": 24, "target_modules": TARGETS},
            },
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.CommonsenseDataModule",
            "init_args": {
                "train_path": str(tmp / "train.json"),
                "test_dir": str(tmp / "test"),
                "test_sets": ["boolq"],
                "val_size": 2,
                "batch_size": 2,
            },
        },
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
