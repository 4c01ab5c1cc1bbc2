"""Benchmark: inference latency of the merged and the unmerged adapted model, ours against Hugging Face PEFT.

All-MiniLM-L6-v2 (the packaged pretrained model, ``AutoModelForSequenceClassification``, num_labels=2), eval
mode, ``torch.no_grad()``, one fixed batch of random token ids, batch 32 x seq 128 (both modes; ``--quick`` only
takes fewer repeats). Adapters: r=8, alpha=16 on query/value, the classifier saved; the adapter tensors are
given random non-zero values (dU starts at 0, which would make some of the work trivially zero). Variants:

* ``base``               the untouched pretrained model;
* ``merged``             our KaSA after ``merge_adapters`` (the wrappers stay, the forward is the base layer's);
* ``merged_unloaded``    our KaSA after ``merge_and_unload`` (plain modules again);
* ``kasa``               our KaSA, unmerged (base + the r-wide side branch);
* ``lora``               our LoRA, unmerged;
* ``peft_lora``          PEFT LoRA, unmerged;
* ``peft_kasa``          PEFT KaSA (``LoraConfig(kasa_config=KasaConfig())``), unmerged.

Timing as in ``benchmarks/README.md``: one repeat runs a block of forwards of every variant, the order rotating; the
ratios are medians over repeats of the per-repeat ratio. ``merged_vs_base_latency`` should be 1 within noise.

    python -m benchmarks.inference [--quick] [--json PATH] [--repeats N] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks.cli import add_common_arguments, pick_device
from benchmarks.machine import MINILM, Probe, quiet, thread_info, torch_threads
from benchmarks.models import SMOKE_BERT
from benchmarks.results import write_json
from benchmarks.stats import median_ratio, ratio_ci, summary
from benchmarks.tables import fmt_s, markdown_table, ratios_table
from benchmarks.timing import device_sync, interleave, per_call

R, ALPHA, SEED = 8, 16.0, 0
TARGETS = ["query", "value"]
VARIANTS = ("base", "merged", "merged_unloaded", "kasa", "lora", "peft_lora", "peft_kasa")
LABELS = {
    "base": "base model (no adapters)",
    "merged": "KaSA (ours), merge_adapters",
    "merged_unloaded": "KaSA (ours), merge_and_unload",
    "kasa": "KaSA (ours), unmerged",
    "lora": "LoRA (ours), unmerged",
    "peft_lora": "PEFT LoRA, unmerged",
    "peft_kasa": "PEFT KaSA, unmerged",
}
REQUIRED = ("merged_vs_base_latency", "kasa_vs_peft_lora_latency", "kasa_vs_peft_kasa_latency")


@dataclass
class Mode:
    batch: int
    seq: int
    repeats: int
    calls: int  # forwards per block
    smoke: bool = False


MODES = {
    "full": Mode(32, 128, repeats=11, calls=2),
    "quick": Mode(32, 128, repeats=5, calls=1),
    "smoke": Mode(2, 16, repeats=2, calls=1, smoke=True),
}


def build_base(smoke: bool) -> nn.Module:
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from kasa_lightning.hub import resolve_pretrained

    torch.manual_seed(SEED)
    if smoke:
        sizes = {k: v for k, v in SMOKE_BERT.items() if k != "model_type"}  # BertConfig knows its own model type
        return BertForSequenceClassification(BertConfig(**sizes, num_labels=2))
    return AutoModelForSequenceClassification.from_pretrained(resolve_pretrained(MINILM), num_labels=2)


def randomize(tensors: list[torch.Tensor], seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=g) * 0.02)


def build_variants(base: nn.Module, device: str) -> dict[str, nn.Module]:
    import peft

    from kasa_lightning import AdapterConfig, adapter_parameters, apply_adapters, merge_adapters, merge_and_unload

    def ours(method: str) -> nn.Module:
        torch.manual_seed(SEED)
        model = apply_adapters(
            copy.deepcopy(base),
            AdapterConfig(method=method, r=R, alpha=ALPHA, target_modules=TARGETS, modules_to_save=["classifier"]),
        )
        randomize(adapter_parameters(model))
        return model

    def theirs(kasa: bool) -> nn.Module:
        torch.manual_seed(SEED)
        extra = {"kasa_config": peft.KasaConfig()} if kasa else {}
        model = peft.get_peft_model(
            copy.deepcopy(base),
            peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, modules_to_save=["classifier"], **extra),
        )
        randomize([p for n, p in model.named_parameters() if "lora_" in n])
        return model

    models = {
        "base": copy.deepcopy(base),
        "merged": merge_adapters(ours("kasa")),
        "merged_unloaded": merge_and_unload(ours("kasa")),
        "kasa": ours("kasa"),
        "lora": ours("lora"),
        "peft_lora": theirs(kasa=False),
        "peft_kasa": theirs(kasa=True),
    }
    return {k: m.to(device).eval() for k, m in models.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    repeats = args.repeats or mode.repeats
    device = pick_device(args.device)

    with torch_threads(args.threads):
        probe = Probe().start()
        t0 = time.perf_counter()
        base = build_base(mode.smoke)
        models = build_variants(base, device)
        g = torch.Generator().manual_seed(1234)
        vocab = base.config.vocab_size
        batch = {
            "input_ids": torch.randint(min(1000, vocab // 2), vocab, (mode.batch, mode.seq), generator=g),
            "attention_mask": torch.ones(mode.batch, mode.seq, dtype=torch.long),
        }
        batch = {k: v.to(device) for k, v in batch.items()}
        sync = device_sync(device)

        def forward(model: nn.Module):  # noqa: ANN202
            def call() -> None:
                with torch.no_grad():
                    model(**batch)

            return call

        with torch.no_grad():  # the adapted models compute what they should (merged = unmerged, up to rounding)
            ref = models["kasa"](**batch).logits
            agree = {k: float((models[k](**batch).logits - ref).abs().max()) for k in ("merged", "merged_unloaded")}
        times = interleave({k: per_call(forward(m), mode.calls, sync) for k, m in models.items()}, repeats, warmup=1)
        wall = time.perf_counter() - t0
        probe.stop()
        tinfo = thread_info()

    ratios = {
        "merged_vs_base_latency": median_ratio(times["merged"], times["base"]),
        "kasa_vs_peft_lora_latency": median_ratio(times["kasa"], times["peft_lora"]),
        "kasa_vs_peft_kasa_latency": median_ratio(times["kasa"], times["peft_kasa"]),
        "merged_unloaded_vs_base_latency": median_ratio(times["merged_unloaded"], times["base"]),
        "unmerged_kasa_vs_base_latency": median_ratio(times["kasa"], times["base"]),
        "lora_vs_peft_lora_latency": median_ratio(times["lora"], times["peft_lora"]),
        "kasa_vs_lora_latency": median_ratio(times["kasa"], times["lora"]),
    }
    pairs = {
        "merged_vs_base_latency": ("merged", "base"),
        "kasa_vs_peft_lora_latency": ("kasa", "peft_lora"),
        "kasa_vs_peft_kasa_latency": ("kasa", "peft_kasa"),
    }
    ci = {key: ratio_ci(times[a], times[b]) for key, (a, b) in pairs.items()}
    stats = summary(times)
    rows = [
        (
            LABELS[k],
            fmt_s(stats[k]["median_s"]),
            f"{100 * stats[k]['spread']:.0f}%",
            f"{median_ratio(times[k], times['base']):.3f}",
            f"{median_ratio(times[k], times['peft_lora']):.3f}",
        )
        for k in VARIANTS
    ]
    title = "tiny BERT (smoke)" if mode.smoke else "all-MiniLM-L6-v2"
    print(f"# Inference latency: {title}, batch {mode.batch} x seq {mode.seq}, eval, no_grad, {mode_name} mode")
    print(
        f"device {device}, torch threads {tinfo['torch_threads']}, torch {torch.__version__}, repeats {repeats} x "
        f"{mode.calls} forward(s) per block (1 warm-up round excluded), wall {wall:.0f} s\n"
    )
    print(markdown_table(["variant", "latency (median)", "spread", "vs base", "vs PEFT LoRA"], rows))
    print(
        f"\nmax |logits - unmerged KaSA logits|: merged {agree['merged']:.1e}, "
        f"merged and unloaded {agree['merged_unloaded']:.1e}"
    )
    print("\nRatios (median over repeats of per-repeat ratios):\n")
    print(ratios_table(ratios))
    print("\nDistribution-free 95% confidence intervals of the median ratio (order statistics over the repeats):\n")
    print(
        markdown_table(
            ["ratio", "median", "CI", "coverage"],
            [(k, f"{ratios[k]:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{100 * cov:.1f}%") for k, (lo, hi, cov) in ci.items()],
        )
    )
    print("\n" + probe.describe())
    if device == "cpu":
        print("CPU timings on a shared machine: compare the ratios, not the absolute times.")

    result = {
        "benchmark": "inference",
        "mode": mode_name,
        "device": device,
        "threads": tinfo,
        "model": title,
        "batch": [mode.batch, mode.seq],
        "r": R,
        "alpha": ALPHA,
        "repeats": repeats,
        "calls_per_block": mode.calls,
        "wall_s": wall,
        "probe_gflops": probe.as_dict(),
        "times_s": times,
        "summary": stats,
        "merged_max_abs_diff": agree,
        "ratios": ratios,
        "ratio_ci": ci,
    }
    if args.json:
        write_json(args.json, result, device)
    return result


if __name__ == "__main__":
    main()
