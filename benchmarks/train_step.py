"""Benchmark: time per optimizer step and peak memory, our KaSA and LoRA against Hugging Face PEFT's.

One optimizer step = zero_grad + forward + loss (+ the KaSA regulariser) + backward + AdamW step, on one fixed
batch of random token ids (no data loading). Variants, all r=8, alpha=16, dropout 0, fp32, AdamW(lr=1e-4) over
the trainable parameters, the same seed:

* ``kasa``        ours, ``apply_adapters(AdapterConfig(method="kasa"))``, loss + ``adapter_loss(model)``;
* ``lora``        ours, ``method="lora"``;
* ``peft_lora``   PEFT ``LoraConfig``;
* ``peft_kasa``   PEFT ``LoraConfig(kasa_config=KasaConfig(beta=1e-4, gamma=1e-3))``, loss + ``model._get_kasa_loss()``;
* ``lightning``   our KaSA through ``KaSAModule`` and a Lightning ``Trainer(max_steps=...)`` (no logger, progress
  bar or checkpointing); a callback times ``on_train_batch_start`` -> ``on_train_batch_end`` (forward, loss,
  logging, backward, optimizer step), and the full loop iteration (start to next start).

on two models: (a) the packaged pretrained all-MiniLM-L6-v2, ``AutoModelForSequenceClassification``
(num_labels=2, the classifier trained, targets query/value), batch 32 x seq 128 (quick: 16 x 64); (b) a small
LLaMA-shaped causal LM built in code (hidden 256, 4 layers, intermediate 688, vocab 1000, targets
q_proj,k_proj,v_proj,up_proj,down_proj), batch 8 x seq 256 (quick: 8 x 128).

Timing (DESIGN.md section 6): warm-up steps are excluded; one repeat runs a block of steps of every variant, the
order rotating between repeats; the table gives medians, each ratio is the median over repeats of the per-repeat
ratio. The Lightning block is one ``Trainer.fit`` of (warm-up + timed) steps on the same module (a fresh AdamW each
fit, its first step excluded).

Peak memory is measured in a separate pass, one step per variant after the timing (AdamW state exists):
peak = persistent + transient, where persistent = the bytes of the distinct tensor storages of the model's
parameters and buffers and of the optimizer state at the start of the step (grads are set to None first), and
transient = the highest number of bytes the step allocated on top of that at any moment (activations, grads,
optimizer temporaries). On CUDA the transient part is ``torch.cuda.max_memory_allocated`` minus the allocation at
the start. On the CPU it comes from torch's own CPU allocator: ``torch.profiler`` with ``profile_memory=True``
records every allocation and free of the c10 CPU allocator with the running "Total Allocated", whose maximum over
the step (minus its value at the start) is exactly the transient peak, library workspaces included.
``tracemalloc`` does not see tensor memory (torch allocates it in C++, outside Python's allocator: a 16 MB
tensor shows as ~0 bytes), and RSS is process-wide, monotonic at its peak (``ru_maxrss``) and blurred by the
malloc arenas that keep freed pages, so neither can tell the variants apart in one process.

    python benchmarks/train_step.py [--quick] [--json PATH] [--repeats N] [--threads N] [--device cpu|cuda]
                                    [--cases minilm,llama] [--profile]

``--profile`` adds a torch.profiler breakdown of our KaSA step against our LoRA step (top operators by self
CPU time and the largest per-step differences).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # "import _common" from anywhere
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    MINILM,
    Probe,
    add_common_arguments,
    device_sync,
    fmt_mb,
    fmt_s,
    geometric_mean,
    interleave,
    markdown_table,
    median,
    median_ratio,
    per_call,
    pick_device,
    quiet,
    ratio_ci,
    ratios_table,
    silent_stderr,
    summary,
    thread_info,
    torch_threads,
    write_json,
)

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
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 1000,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
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
STEP_RATIOS = {  # the step-time ratios that get a confidence interval: key -> (numerator, denominator)
    "kasa_vs_lora_step": ("kasa", "lora"),
    "lightning_vs_plain_step": ("lightning", "kasa"),
    "kasa_vs_peft_kasa_step": ("kasa", "peft_kasa"),
    "lora_vs_peft_lora_step": ("lora", "peft_lora"),
}
REQUIRED = ("kasa_vs_lora_step", "lightning_vs_plain_step", "kasa_vs_peft_kasa_step", "kasa_vs_lora_peak_memory")


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
            build = functools.partial(_from_config, TINY_BERT, causal=False)
            vocab, title, module_kwargs = TINY_BERT["vocab_size"], "tiny BERT (smoke)", {"backbone_config": TINY_BERT}
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
def build_variant(case: Case, variant: str, device: str) -> tuple[nn.Module, Callable[[], torch.Tensor] | None]:
    """(model in train mode on ``device``, regulariser or None), built from the same seed."""
    from kasa_lightning import AdapterConfig, adapted_layers, adapter_loss, apply_adapters

    torch.manual_seed(SEED)
    base = case.build_base()
    if variant in ("kasa", "lora"):
        cfg = AdapterConfig(
            method=variant,
            r=case.r,
            alpha=case.alpha,
            target_modules=case.targets,
            modules_to_save=case.modules_to_save,
            beta=BETA,
            gamma=GAMMA,
        )
        model = apply_adapters(base, cfg)
        for _, layer in adapted_layers(model):  # float32 adapters on a half-precision base (as KaSAModule does)
            for p in layer.adapter_parameters():
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
            loss = model(**batch).loss
            if reg is not None:
                loss = loss + reg()
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

    from kasa_lightning import AdapterConfig, KaSAModule

    torch.manual_seed(SEED)
    cfg = AdapterConfig(
        method="kasa",
        r=case.r,
        alpha=case.alpha,
        target_modules=case.targets,
        modules_to_save=case.modules_to_save,
        beta=BETA,
        gamma=GAMMA,
    )
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


# ---------------------------------------------------------------------- memory
def persistent_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the distinct storages of parameters, buffers, grads and optimizer state."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    for state in opt.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    storages = {}
    for t in tensors:
        st = t.untyped_storage()
        storages[(str(st.device), st.data_ptr())] = st.nbytes()
    return sum(storages.values())


def cpu_transient_peak(fn: Callable[[], None]) -> int:
    """Highest number of bytes the CPU allocator held on top of its state at the start, while ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with silent_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted(
        (e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0),
        key=lambda e: e["ts"],
    )
    if not mem:
        return 0
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in mem) - start)


def cuda_transient_peak(fn: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def measure_memory(model: nn.Module, opt: torch.optim.Optimizer, step: Callable[[], None], device: str) -> dict:
    opt.zero_grad(set_to_none=True)
    persistent = persistent_bytes(model, opt)
    transient = (cuda_transient_peak if device.startswith("cuda") else cpu_transient_peak)(step)
    return {"persistent_bytes": persistent, "transient_bytes": transient, "peak_bytes": persistent + transient}


# ---------------------------------------------------------------------- profiling (--profile)
def profile_steps(steps: dict[str, Callable[[], None]], rounds: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and operator: self CPU time (us per step) and calls per step. The variants' steps are profiled
    in turn (A B A B ...), one profiler session per step, so that a drift of the machine hits both alike."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            with silent_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            for e in prof.key_averages():
                row = out[name].setdefault(e.key, {"self_us": 0.0, "calls": 0.0})
                row["self_us"] += e.self_cpu_time_total / rounds
                row["calls"] += e.count / rounds
    return out


def components(case: Case, built: dict, opts: dict, repeats: int) -> dict[str, list[float]]:
    """The parts of the step where KaSA and LoRA differ, timed apart (interleaved): the regulariser (forward +
    backward, ours and PEFT's), the AdamW step over KaSA's and LoRA's trainable tensors, forward + backward of the
    task loss alone, and the adapted-layer lookup that ``adapter_loss`` does every step."""
    from kasa_lightning import adapted_layers, adapter_loss

    def clear(model: nn.Module) -> None:
        for p in model.parameters():
            p.grad = None

    def reg(variant: str) -> Callable[[], None]:
        model = built[variant][0]
        loss = (lambda: adapter_loss(model)) if variant == "kasa" else model._get_kasa_loss
        return lambda: (clear(model), loss().backward())

    def task(variant: str) -> Callable[[], None]:
        model = built[variant][0]
        return lambda: (clear(model), model(**case.batch).loss.backward())

    for v in ("kasa", "lora"):  # grads for the optimizer steps
        task(v)()
    blocks = {
        "regulariser fwd+bwd, ours": per_call(reg("kasa"), 10),
        "regulariser fwd+bwd, PEFT": per_call(reg("peft_kasa"), 10),
        "AdamW step, KaSA tensors": per_call(opts["kasa"].step, 10),
        "AdamW step, LoRA tensors": per_call(opts["lora"].step, 10),
        "adapted_layers(model) walk": per_call(lambda: list(adapted_layers(built["kasa"][0])), 10),
        "task fwd+bwd, KaSA": per_call(task("kasa"), 1),
        "task fwd+bwd, LoRA": per_call(task("lora"), 1),
    }
    return interleave(blocks, repeats, warmup=1)


def profile_report(
    ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]], parts: dict[str, list[float]], top: int = 10
) -> str:
    total_a = sum(v["self_us"] for v in ours.values())
    total_b = sum(v["self_us"] for v in theirs.values())
    calls_a = sum(v["calls"] for v in ours.values())
    calls_b = sum(v["calls"] for v in theirs.values())
    lines = [
        "Parts of the step, timed apart (median of interleaved repeats):\n",
        markdown_table(["part", "time per call"], [(k, fmt_s(median(v))) for k, v in parts.items()]),
        "",
    ]
    lines += [
        f"torch.profiler, self CPU per step: KaSA {total_a / 1e3:.1f} ms in {calls_a:.0f} op calls, "
        f"LoRA {total_b / 1e3:.1f} ms in {calls_b:.0f} op calls",
        "",
    ]
    rows = sorted(ours.items(), key=lambda kv: -kv[1]["self_us"])[:top]
    lines.append("Top operators of the KaSA step (self CPU time per step):\n")
    lines.append(
        markdown_table(
            ["operator", "KaSA ms", "calls", "LoRA ms", "calls"],
            [
                (
                    k,
                    f"{v['self_us'] / 1e3:.2f}",
                    f"{v['calls']:.0f}",
                    f"{theirs.get(k, {}).get('self_us', 0) / 1e3:.2f}",
                    f"{theirs.get(k, {}).get('calls', 0):.0f}",
                )
                for k, v in rows
            ],
        )
    )
    keys = set(ours) | set(theirs)
    diffs = sorted(
        (
            (
                k,
                ours.get(k, {}).get("self_us", 0) - theirs.get(k, {}).get("self_us", 0),
                ours.get(k, {}).get("calls", 0) - theirs.get(k, {}).get("calls", 0),
            )
            for k in keys
        ),
        key=lambda x: -x[1],
    )[:top]
    lines.append(
        "\nLargest per-step differences, KaSA minus LoRA (times from a few profiled steps are noisy, "
        "the call counts are exact):\n"
    )
    lines.append(
        markdown_table(
            ["operator", "extra ms", "extra calls"], [(k, f"{d / 1e3:+.2f}", f"{c:+.0f}") for k, d, c in diffs]
        )
    )
    extra_calls = sorted(
        ((k, ours.get(k, {}).get("calls", 0) - theirs.get(k, {}).get("calls", 0)) for k in keys), key=lambda x: -x[1]
    )[:top]
    lines.append("\nOperators with the most extra calls per step, KaSA minus LoRA:\n")
    lines.append(markdown_table(["operator", "extra calls"], [(k, f"{c:+.0f}") for k, c in extra_calls]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- one case
def run_case(case: Case, device: str, mode: Mode, repeats: int, do_profile: bool, root: str) -> dict[str, Any]:
    batch = {k: v.to(device) for k, v in case.batch.items()}
    case.batch = batch
    built = {v: build_variant(case, v, device) for v in PLAIN}
    opts = {v: make_optimizer(built[v][0]) for v in PLAIN}
    steps = {v: make_step(built[v][0], built[v][1], opts[v], batch) for v in PLAIN}
    sync = device_sync(device)
    trainable = {v: sum(p.numel() for p in built[v][0].parameters() if p.requires_grad) for v in PLAIN}

    def plain_block(v: str) -> Callable[[], float]:
        def block() -> float:
            sync()
            t0 = time.perf_counter()
            for _ in range(mode.steps):
                steps[v]()
            sync()
            return (time.perf_counter() - t0) / mode.steps

        return block

    for _ in range(mode.warmup):  # AdamW state, allocator caches, lazy inits; excluded
        for v in PLAIN:
            steps[v]()
    blocks = {v: plain_block(v) for v in PLAIN}
    lightning, extra = lightning_block(case, device, mode, root)
    blocks["lightning"] = lightning
    times = interleave(blocks, repeats)

    memory = {v: measure_memory(built[v][0], opts[v], steps[v], device) for v in PLAIN}
    profile_text = None
    if do_profile:
        prof = profile_steps({"kasa": steps["kasa"], "lora": steps["lora"]})
        parts = components(case, built, opts, max(3, repeats))
        profile_text = profile_report(prof["kasa"], prof["lora"], parts)

    t = times
    ratios = {
        "kasa_vs_lora_step": median_ratio(t["kasa"], t["lora"]),
        "lightning_vs_plain_step": median_ratio(t["lightning"], t["kasa"]),
        "kasa_vs_peft_kasa_step": median_ratio(t["kasa"], t["peft_kasa"]),
        "kasa_vs_lora_peak_memory": memory["kasa"]["peak_bytes"] / memory["lora"]["peak_bytes"],
        "lora_vs_peft_lora_step": median_ratio(t["lora"], t["peft_lora"]),
        "kasa_vs_peft_lora_step": median_ratio(t["kasa"], t["peft_lora"]),
        "peft_kasa_vs_peft_lora_step": median_ratio(t["peft_kasa"], t["peft_lora"]),
        "lightning_vs_plain_iteration": median_ratio(extra["iteration_s"], t["kasa"]),
        "kasa_vs_peft_kasa_peak_memory": memory["kasa"]["peak_bytes"] / memory["peft_kasa"]["peak_bytes"],
        "kasa_vs_lora_transient_memory": memory["kasa"]["transient_bytes"] / max(1, memory["lora"]["transient_bytes"]),
    }
    ci = {key: ratio_ci(t[a], t[b]) for key, (a, b) in STEP_RATIOS.items()}
    return {
        "case": case.name,
        "title": case.title,
        "batch": list(batch["input_ids"].shape),
        "times_s": times,
        "lightning_iteration_s": extra["iteration_s"],
        "summary": summary(times),
        "memory": memory,
        "trainable_params": trainable,
        "ratios": ratios,
        "ratio_ci": ci,
        "profile": profile_text,
    }


def case_table(res: dict[str, Any]) -> str:
    s, mem, t = res["summary"], res["memory"], res["times_s"]
    rows = []
    for v in VARIANTS:
        m = mem.get(v)
        rows.append(
            (
                LABELS[v],
                fmt_s(s[v]["median_s"]),
                f"{100 * s[v]['spread']:.0f}%",
                f"{median_ratio(t[v], t['lora']):.3f}",
                f"{median_ratio(t[v], t['peft_lora']):.3f}",
                fmt_mb(m["peak_bytes"]) if m else "-",
                fmt_mb(m["transient_bytes"]) if m else "-",
                f"{res['trainable_params'][v]:,}" if v in res["trainable_params"] else "(as KaSA)",
            )
        )
    return markdown_table(
        [
            "variant",
            "step (median)",
            "spread",
            "vs LoRA (ours)",
            "vs PEFT LoRA",
            "peak MB",
            "transient MB",
            "trainable params",
        ],
        rows,
    )


# ---------------------------------------------------------------------- GPU presets (--preset)
ROBERTA_BASE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
}
LLAMA3_8B_LAYERS = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
PRESETS: dict[str, dict[str, Any]] = {
    # the paper's NLU setting: RoBERTa-base sizes (random weights), classification, query/value, r 8
    "roberta-base": {
        "config": ROBERTA_BASE,
        "task": "classification",
        "targets": ["query", "value"],
        "modules_to_save": ["classifier"],
        "r": 8,
        "alpha": 16.0,
        "batch": (32, 128),
        "precisions": ["32-true", "bf16-mixed"],
        "dtype": None,
        "smoke": {
            "vocab_size": 1000,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 40,
        },
        "smoke_batch": (2, 16),
    },
    # LLaMA-3-8B layer shapes (h4096, i14336, GQA 32/8), 4 layers, bf16 base, float32 adapters, bf16 autocast
    "llama3-8b-layers": {
        "config": LLAMA3_8B_LAYERS,
        "task": "causal_lm",
        "targets": list(LLAMA_TARGETS),
        "modules_to_save": [],
        "r": 32,
        "alpha": 64.0,
        "batch": (4, 1024),
        "precisions": ["bf16-mixed"],
        "dtype": "bfloat16",
        "smoke": {
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        },
        "smoke_batch": (2, 16),
    },
}
PRESET_VARIANTS = ("kasa", "lora", "peft_lora", "peft_kasa", "kasa_compiled", "lora_compiled", "lightning")
PRESET_LABELS = {**LABELS, "kasa_compiled": "KaSA (ours), torch.compile", "lora_compiled": "LoRA (ours), torch.compile"}
PRESET_RATIOS = {  # key -> (numerator, denominator)
    "kasa_vs_lora_step": ("kasa", "lora"),
    "kasa_vs_lora_step_compiled": ("kasa_compiled", "lora_compiled"),
    "compiled_kasa_vs_peft_kasa_step": ("kasa_compiled", "peft_kasa"),
    "kasa_vs_peft_kasa_step": ("kasa", "peft_kasa"),
    "lora_vs_peft_lora_step": ("lora", "peft_lora"),
    "lightning_vs_plain_step": ("lightning", "kasa"),
    "compiled_vs_eager_kasa_step": ("kasa_compiled", "kasa"),
}


def preset_case(name: str, precision: str, smoke: bool) -> Case:
    """The preset's model (random weights from its config; ``smoke``: tiny sizes of the same family) and batch."""
    spec = PRESETS[name]
    cfg = {**spec["config"], **(spec["smoke"] if smoke else {})}
    batch, seq = spec["smoke_batch"] if smoke else spec["batch"]
    causal = spec["task"] == "causal_lm"
    dtype = {"bfloat16": torch.bfloat16, None: None}[spec["dtype"]]

    def build() -> nn.Module:
        model = _from_config(cfg, causal=causal)
        return model.to(dtype) if dtype is not None else model

    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, cfg["vocab_size"], (batch, seq), generator=g)
    data = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids.clone() if causal else torch.randint(0, 2, (batch,), generator=g),
    }
    kwargs: dict[str, Any] = {"backbone_config": cfg}
    if spec["dtype"]:
        kwargs["dtype"] = spec["dtype"]
    title = f"{name}{' (smoke sizes)' if smoke else ''}, {spec['task']}, batch {batch} x seq {seq}, {precision}"
    return Case(
        f"{name}/{precision}",
        title,
        spec["task"],
        list(spec["targets"]),
        list(spec["modules_to_save"]),
        data,
        build,
        kwargs,
        r=4 if smoke else spec["r"],
        alpha=spec["alpha"],
        precision=precision,
    )


def run_preset_case(
    case: Case, device: str, mode: Mode, repeats: int, root: str, backend: str | None, variants: list[str]
) -> dict[str, Any]:
    """Time every variant of one preset case, interleaved; compiled variants compile in the (untimed) warm-up."""
    batch = {k: v.to(device) for k, v in case.batch.items()}
    case.batch = batch
    sync = device_sync(device)
    steps, compile_s, blocks = {}, {}, {}
    for v in (x for x in variants if x != "lightning"):
        model, reg = build_variant(case, v.removesuffix("_compiled"), device)
        if v.endswith("_compiled"):
            model.compile(**({"backend": backend} if backend else {}), dynamic=False)
        steps[v] = make_step(model, reg, make_optimizer(model), batch, case.precision)
        sync()
        t0 = time.perf_counter()
        steps[v]()  # compiles the compiled variants
        sync()
        compile_s[v] = time.perf_counter() - t0
        for _ in range(mode.warmup):
            steps[v]()

        def block(step=steps[v]) -> float:  # noqa: ANN001
            sync()
            t0 = time.perf_counter()
            for _ in range(mode.steps):
                step()
            sync()
            return (time.perf_counter() - t0) / mode.steps

        blocks[v] = block
    if "lightning" in variants:
        blocks["lightning"], _ = lightning_block(case, device, mode, root)
    times = interleave(blocks, repeats)
    ratios = {
        key: median_ratio(times[a], times[b]) for key, (a, b) in PRESET_RATIOS.items() if a in times and b in times
    }
    ci = {key: ratio_ci(times[a], times[b]) for key, (a, b) in PRESET_RATIOS.items() if a in times and b in times}
    return {
        "case": case.name,
        "title": case.title,
        "precision": case.precision,
        "times_s": times,
        "summary": summary(times),
        "first_step_s": compile_s,
        "ratios": ratios,
        "ratio_ci": ci,
    }


def preset_table(res: dict[str, Any]) -> str:
    s, t = res["summary"], res["times_s"]
    rows = []
    for v in PRESET_VARIANTS:
        if v not in s:
            continue
        rows.append(
            (
                PRESET_LABELS[v],
                fmt_s(s[v]["median_s"]),
                f"{100 * s[v]['spread']:.0f}%",
                f"{median_ratio(t[v], t['lora']):.3f}" if "lora" in t else "-",
                f"{median_ratio(t[v], t['peft_kasa']):.3f}" if "peft_kasa" in t else "-",
                fmt_s(res["first_step_s"][v]) if v in res["first_step_s"] else "-",
            )
        )
    return markdown_table(
        ["variant", "step (median)", "spread", "vs LoRA (ours)", "vs PEFT KaSA", "first step (compile)"], rows
    )


def run_presets(args: argparse.Namespace, device: str) -> dict[str, Any]:
    names = list(PRESETS) if args.preset == "all" else [p for p in args.preset.split(",") if p]
    unknown = sorted(set(names) - set(PRESETS))
    if unknown:
        raise SystemExit(f"--preset: unknown presets {unknown}; choose from {', '.join(PRESETS)} or all")
    variants = [v for v in (args.variants or ",".join(PRESET_VARIANTS)).split(",") if v]
    bad = sorted(set(variants) - set(PRESET_VARIANTS))
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; choose from {', '.join(PRESET_VARIANTS)}")
    smoke = bool(args.smoke)
    mode = (
        Mode({}, repeats=2, steps=1, warmup=1, smoke=True)
        if smoke
        else Mode({}, repeats=5, steps=3, warmup=2)
        if args.quick
        else Mode({}, repeats=11, steps=5, warmup=3)
    )
    repeats = args.repeats or mode.repeats
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        results = [
            run_preset_case(preset_case(n, prec, smoke), device, mode, repeats, root, args.compile_backend, variants)
            for n in names
            for prec in PRESETS[n]["precisions"]
        ]
        wall = time.perf_counter() - t0
        tinfo = thread_info()
    ratios = {f"{k}_{r['case']}": v for r in results for k, v in r["ratios"].items()}
    print(
        f"# Train step presets on {device}"
        f"{' (' + torch.cuda.get_device_name(0) + ')' if device.startswith('cuda') else ''}, torch "
        f"{torch.__version__}, repeats {repeats} x {mode.steps} steps (warm-up {mode.warmup} + the compiling first "
        f"step excluded), wall {wall:.0f} s"
    )
    for r in results:
        print(f"\n## {r['title']}\n")
        print(preset_table(r))
    print("\nRatios (median over repeats of per-repeat ratios):\n")
    print(ratios_table(ratios))
    result = {
        "benchmark": "train_step_presets",
        "presets": names,
        "device": device,
        "threads": tinfo,
        "mode": "smoke" if smoke else "quick" if args.quick else "full",
        "repeats": repeats,
        "steps_per_block": mode.steps,
        "compile_backend": args.compile_backend or "inductor",
        "wall_s": wall,
        "cases": results,
        "ratios": ratios,
        "ratio_ci": {f"{k}_{r['case']}": v for r in results for k, v in r["ratio_ci"].items()},
    }
    if args.json:
        write_json(args.json, result, device)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--cases", default="minilm,llama", help="comma-separated: minilm, llama")
    parser.add_argument("--profile", action="store_true", help="profile our KaSA step against our LoRA step")
    parser.add_argument(
        "--preset",
        default=None,
        help=f"GPU presets instead of the CPU cases: comma-separated {', '.join(PRESETS)}, or all",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help=f"with --preset: comma-separated subset of {', '.join(PRESET_VARIANTS)} (default all)",
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="with --preset: torch.compile backend of the compiled variants (default inductor; "
        "aot_eager for a quick CPU check)",
    )
    args = parser.parse_args(argv)
    quiet()
    if args.preset:
        return run_presets(args, pick_device(args.device))
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    repeats = args.repeats or mode.repeats
    device = pick_device(args.device)
    cases = [c for c in args.cases.split(",") if c]

    with torch_threads(args.threads), tempfile.TemporaryDirectory() as root:
        probe = Probe().start()
        t0 = time.perf_counter()
        results = []
        for name in cases:
            batch, seq = mode.sizes[name]
            results.append(run_case(make_case(name, batch, seq, mode.smoke), device, mode, repeats, args.profile, root))
        wall = time.perf_counter() - t0
        probe.stop()
        tinfo = thread_info()

    ratios: dict[str, float] = {}
    for key in results[0]["ratios"]:  # the headline ratio: geometric mean over the cases; per case with a suffix
        ratios[key] = geometric_mean([r["ratios"][key] for r in results])
    for r in results:
        ratios.update({f"{k}_{r['case']}": v for k, v in r["ratios"].items()})

    print(
        f"# Train step: KaSA/LoRA (ours) vs PEFT, r={R}, alpha={ALPHA:g}, fp32, AdamW lr={LR:g}, "
        f"{'smoke' if mode.smoke else 'quick' if args.quick else 'full'} mode"
    )
    print(
        f"device {device}, torch threads {tinfo['torch_threads']}, torch {torch.__version__}, repeats {repeats} x "
        f"{mode.steps} steps per block (warm-up {mode.warmup} excluded), wall {wall:.0f} s"
    )
    for r in results:
        print(f"\n## {r['title']}\n")
        print(case_table(r))
        if r["profile"]:
            print(f"\n### Profile of the KaSA step vs the LoRA step ({r['case']})\n")
            print(r["profile"])
    print(
        "\nRatios (ours / theirs; median over repeats of per-repeat ratios; unsuffixed = geometric mean over "
        "the cases):\n"
    )
    print(ratios_table(ratios))
    print(
        "\nStep-time ratios per case with a distribution-free 95% confidence interval of the median over repeats "
        "(order statistics of the per-repeat ratios; the coverage is exact for independent repeats):\n"
    )
    rows = [
        (
            key,
            r["case"],
            f"{r['ratios'][key]:.3f}",
            f"[{r['ratio_ci'][key][0]:.3f}, {r['ratio_ci'][key][1]:.3f}]",
            f"{100 * r['ratio_ci'][key][2]:.1f}%",
        )
        for key in STEP_RATIOS
        for r in results
    ]
    print(markdown_table(["ratio", "case", "median", "CI", "coverage"], rows, align="llrrr"))
    print("\n" + probe.describe())
    if device == "cpu":
        print("CPU timings on a shared machine: compare the ratios, not the absolute times.")

    result = {
        "benchmark": "train_step",
        "mode": "smoke" if mode.smoke else "quick" if args.quick else "full",
        "device": device,
        "threads": tinfo,
        "r": R,
        "alpha": ALPHA,
        "lr": LR,
        "seed": SEED,
        "repeats": repeats,
        "steps_per_block": mode.steps,
        "warmup_steps": mode.warmup,
        "wall_s": wall,
        "probe_gflops": probe.as_dict(),
        "cases": results,
        "ratio_definitions": {
            "kasa_vs_lora_step": "step time, our KaSA / our LoRA",
            "lightning_vs_plain_step": "our KaSA step inside KaSAModule + Trainer (batch start -> end) / plain loop",
            "lightning_vs_plain_iteration": "Trainer loop iteration (batch start -> next start) / plain loop step",
            "kasa_vs_peft_kasa_step": "step time, our KaSA / PEFT KaSA (both with their regulariser)",
            "kasa_vs_lora_peak_memory": "peak bytes (persistent + transient) of the step, our KaSA / our LoRA",
            "(no suffix)": "geometric mean over the cases; _minilm / _llama: per case",
        },
        "ratios": ratios,
        "ratio_ci": {f"{k}_{r['case']}": v for r in results for k, v in r["ratio_ci"].items()},
    }
    if args.json:
        write_json(args.json, result, device)
    return result


if __name__ == "__main__":
    main()
