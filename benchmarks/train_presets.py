"""``train_step --preset``: the GPU presets (roberta-base, LLaMA-3-8B-shaped layers) in fp32 and bf16-mixed, our
KaSA and LoRA, eager and ``torch.compile``d, against PEFT's, with their own table and ratio keys."""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
from torch import nn

from benchmarks.machine import thread_info, torch_threads
from benchmarks.results import write_json
from benchmarks.stats import median_ratio, ratio_ci, summary
from benchmarks.tables import fmt_s, markdown_table, ratios_table
from benchmarks.timing import device_sync, interleave
from benchmarks.train_cases import (
    LABELS,
    LLAMA_TARGETS,
    Case,
    Mode,
    _from_config,
    build_variant,
    lightning_block,
    make_optimizer,
    make_step,
)

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
