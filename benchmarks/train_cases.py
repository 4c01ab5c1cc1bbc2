"""The models and variants of the train-step benchmark: a case (model, batch, loss) built from a config in code
or the packaged MiniLM, each variant (ours, PEFT, through Lightning) on it, and one optimizer step of a variant."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn

from benchmarks.machine import MINILM
from benchmarks.models import SMOKE_BERT
from benchmarks.timing import device_sync

if TYPE_CHECKING:
    from kasa_lightning import AdapterConfig

R, ALPHA, LR, SEED = 8, 16.0, 1e-4, 0
BETA, GAMMA = 1e-4, 1e-3
LLAMA = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
# --smoke (tests only): tiny random models of the same two families
TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
PLAIN = ("kasa", "lora", "peft_lora", "peft_kasa")
VARIANTS = (*PLAIN, "lightning")
LABELS = {
    "kasa": "KaSA (ours)",
    "lora": "LoRA (ours)",
    "peft_lora": "PEFT LoRA",
    "peft_kasa": "PEFT KaSA",
    "lightning": "KaSA (ours), Lightning",
}


@dataclass
class Mode:
    sizes: dict[str, tuple[int, int]]  # case -> (batch, seq)
    repeats: int
    steps: int  # timed steps per block
    warmup: int  # untimed steps (plain: once before the repeats; Lightning: at the start of every fit)
    smoke: bool = False


MODES = {
    "full": Mode({"minilm": (32, 128), "llama": (8, 256)}, repeats=15, steps=2, warmup=2),
    "quick": Mode({"minilm": (16, 64), "llama": (8, 128)}, repeats=7, steps=2, warmup=1),
    "smoke": Mode({"minilm": (2, 16), "llama": (2, 16)}, repeats=2, steps=1, warmup=1, smoke=True),
}


@dataclass
class Case:
    name: str
    title: str
    task: str  # KaSAModule task
    targets: list[str]
    modules_to_save: list[str]
    batch: dict[str, torch.Tensor]
    build_base: Callable[[], nn.Module]
    module_kwargs: dict[str, Any] = field(default_factory=dict)
    r: int = R
    alpha: float = ALPHA
    precision: str = "32-true"  # Lightning's name: "32-true" or "bf16-mixed" (autocast)


def _from_config(cfg: dict[str, Any], causal: bool) -> nn.Module:
    import transformers

    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSequenceClassification
    extra = {} if causal else {"num_labels": 2}
    return auto.from_config(transformers.AutoConfig.for_model(model_type, **cfg, **extra))


def make_case(name: str, batch: int, seq: int, smoke: bool) -> Case:
    g = torch.Generator().manual_seed(1234)
    if name == "minilm":
        if smoke:
            build = functools.partial(_from_config, SMOKE_BERT, causal=False)
            vocab, title, module_kwargs = SMOKE_BERT["vocab_size"], "tiny BERT (smoke)", {"backbone_config": SMOKE_BERT}
        else:
            from transformers import AutoModelForSequenceClassification

            from kasa_lightning.hub import resolve_pretrained

            path = resolve_pretrained(MINILM)
            build = functools.partial(AutoModelForSequenceClassification.from_pretrained, path, num_labels=2)
            vocab, title, module_kwargs = 30522, "all-MiniLM-L6-v2", {}
        data = {
            "input_ids": torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch,), generator=g),
        }
        return Case(
            name,
            f"{title}, classification, batch {batch} x seq {seq}",
            "classification",
            ["query", "value"],
            ["classifier"],
            data,
            build,
            module_kwargs,
        )
    if name == "llama":
        cfg = TINY_LLAMA if smoke else LLAMA
        ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=g)
        data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        title = "tiny LLaMA (smoke)" if smoke else "LLaMA-shaped (h256, 4 layers, i688, vocab 1000)"
        return Case(
            name,
            f"{title}, causal LM, batch {batch} x seq {seq}",
            "causal_lm",
            list(LLAMA_TARGETS),
            [],
            data,
            functools.partial(_from_config, cfg, causal=True),
            {"backbone_config": cfg},
        )
    raise ValueError(f"unknown case {name!r}; choose minilm or llama")


# ---------------------------------------------------------------------- the variants
def adapter_config(case: Case, method: str) -> AdapterConfig:
    """Our ``AdapterConfig`` for ``method`` (kasa or lora) on the case's targets, r, alpha, beta and gamma."""
    from kasa_lightning import AdapterConfig

    return AdapterConfig(
        method=method,
        r=case.r,
        alpha=case.alpha,
        target_modules=case.targets,
        modules_to_save=case.modules_to_save,
        beta=BETA,
        gamma=GAMMA,
    )


def build_variant(case: Case, variant: str, device: str) -> tuple[nn.Module, Callable[[], torch.Tensor] | None]:
    """(model in train mode on ``device``, regulariser or None), built from the same seed."""
    from kasa_lightning import adapter_loss, adapter_parameters, apply_adapters

    torch.manual_seed(SEED)
    base = case.build_base()
    if variant in ("kasa", "lora"):
        model = apply_adapters(base, adapter_config(case, variant))
        for p in adapter_parameters(model):  # float32 adapters on a half-precision base (as KaSAModule does)
            p.data = p.data.float()
        reg = (lambda: adapter_loss(model)) if variant == "kasa" else None
    elif variant in ("peft_lora", "peft_kasa"):
        import peft

        extra = {"kasa_config": peft.KasaConfig(beta=BETA, gamma=GAMMA)} if variant == "peft_kasa" else {}
        cfg = peft.LoraConfig(
            r=case.r,
            lora_alpha=case.alpha,
            lora_dropout=0.0,
            target_modules=case.targets,
            modules_to_save=case.modules_to_save or None,
            **extra,
        )
        model = peft.get_peft_model(base, cfg)
        reg = (lambda: model._get_kasa_loss()) if variant == "peft_kasa" else None
    else:
        raise ValueError(variant)
    model.to(device).train()
    return model, reg


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)


def make_step(
    model: nn.Module,
    reg: Callable[[], torch.Tensor] | None,
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    precision: str = "32-true",
) -> Callable[[], None]:
    """One optimizer step; under "bf16-mixed" the forward and the regulariser run in bf16 autocast (as Lightning's
    mixed-precision plugin does)."""
    device_type = next(iter(batch.values())).device.type

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            # the regulariser first, as KaSAModule does: its backward then runs after the model's (autograd runs
            # the nodes made last first), when the activations are freed, and its gradient does not add to the peak
            penalty = reg() if reg is not None else None
            loss = model(**batch).loss
            if penalty is not None:
                loss = loss + penalty
        loss.backward()
        opt.step()

    return step


class StepTimer(L.Callback):
    """Times on_train_batch_start -> on_train_batch_end of every step, and keeps the start times."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.step_s: list[float] = []
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.sync()
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.sync()
        self.step_s.append(time.perf_counter() - self.starts[-1])


def lightning_block(case: Case, device: str, mode: Mode, root: str) -> tuple[Callable[[], float], dict[str, list]]:
    """A block that fits ``KaSAModule`` for warm-up + timed steps and returns the mean timed step (seconds)."""
    from torch.utils.data import DataLoader

    from kasa_lightning import KaSAModule

    torch.manual_seed(SEED)
    cfg = adapter_config(case, "kasa")
    kwargs = {"num_labels": 2} if case.task == "classification" else {}
    module = KaSAModule(
        backbone=MINILM,
        task=case.task,
        adapter=cfg,
        optimizer=functools.partial(torch.optim.AdamW, lr=LR),
        **case.module_kwargs,
        **kwargs,
    )
    total = mode.warmup + mode.steps
    loader = DataLoader([case.batch] * total, batch_size=None)
    sync = device_sync(device)
    extra: dict[str, list] = {"iteration_s": []}

    def block() -> float:
        timer = StepTimer(sync)
        trainer = L.Trainer(
            accelerator="gpu" if device.startswith("cuda") else "cpu",
            devices=1,
            max_steps=total,
            precision=case.precision,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=root,
            callbacks=[timer],
        )
        trainer.fit(module, train_dataloaders=loader)
        steps = timer.step_s[mode.warmup :]
        gaps = [b - a for a, b in zip(timer.starts[mode.warmup :], timer.starts[mode.warmup + 1 :])]
        extra["iteration_s"].append(sum(gaps) / len(gaps) if gaps else sum(steps) / len(steps))
        return sum(steps) / len(steps)

    return block, extra
