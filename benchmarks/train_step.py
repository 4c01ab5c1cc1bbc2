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

Timing (``benchmarks/README.md``): warm-up steps are excluded; one repeat runs a block of steps of every variant, the
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

    python -m benchmarks.train_step [--quick] [--json PATH] [--repeats N] [--threads N] [--device cpu|cuda]
                                    [--cases minilm,llama] [--profile]

``--profile`` adds a torch.profiler breakdown of our KaSA step against our LoRA step (top operators by self
CPU time and the largest per-step differences).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.cli import add_common_arguments, pick_device
from benchmarks.machine import Probe, quiet, thread_info, torch_threads
from benchmarks.memory import measure_memory
from benchmarks.results import write_json
from benchmarks.stats import geometric_mean, median_ratio, ratio_ci, summary
from benchmarks.step_profile import components, profile_report, profile_steps
from benchmarks.tables import fmt_mb, fmt_s, markdown_table, ratios_table
from benchmarks.timing import device_sync, interleave
from benchmarks.train_cases import (
    ALPHA,
    LABELS,
    LR,
    MODES,
    PLAIN,
    SEED,
    VARIANTS,
    Case,
    Mode,
    R,
    build_variant,
    lightning_block,
    make_case,
    make_optimizer,
    make_step,
)
from benchmarks.train_presets import PRESET_VARIANTS, PRESETS, run_presets

STEP_RATIOS = {  # the step-time ratios that get a confidence interval: key -> (numerator, denominator)
    "kasa_vs_lora_step": ("kasa", "lora"),
    "lightning_vs_plain_step": ("lightning", "kasa"),
    "kasa_vs_peft_kasa_step": ("kasa", "peft_kasa"),
    "lora_vs_peft_lora_step": ("lora", "peft_lora"),
}
REQUIRED = ("kasa_vs_lora_step", "lightning_vs_plain_step", "kasa_vs_peft_kasa_step", "kasa_vs_lora_peak_memory")


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
    parser.add_argument(
        "--quant",
        default=None,
        help="with --preset llama3-8b-layers: comma-separated bases nf4, int8, none (benchmarks/train_quant.py)",
    )
    parser.add_argument("--quant-size", default="cpu", choices=["cpu", "full"], help="with --quant: layer sizes")
    args = parser.parse_args(argv)
    quiet()
    if args.preset and args.quant:
        from benchmarks.train_quant import run_quant

        result = run_quant(args, pick_device(args.device))
        if args.json:
            write_json(args.json, result, result["device"])
        return result
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
