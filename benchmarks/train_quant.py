"""``train_step --preset llama3-8b-layers --quant nf4,int8,none``: one training step on a quantised base.

For each base (``nf4``: bitsandbytes NF4 with double quantisation and bf16 compute; ``int8``: LLM.int8; ``none``:
the bf16 base), the model is saved with random weights (the preset's layer shapes, scaled down by ``--quant-size``:
``cpu`` for a CPU run, ``full`` for the real LLaMA-3-8B layers, ``smoke`` for the tests), loaded with
``from_pretrained(..., quantization_config=...)``, and three variants train on one fixed batch under bf16 autocast:
our KaSA, our LoRA, and PEFT's LoRA on the same base (QLoRA). Reported per base: step time (interleaved repeats,
medians; ratios are medians of per-repeat ratios) and peak memory of one step (``benchmarks.memory``), the bytes of
the target-free base linear weights against their bf16 bytes (codes plus every quantisation constant: absmax, the
nested absmax and code book of double quantisation, int8 row scales), and KaSA's set-up peak during
``apply_adapters`` above the loaded model, in bf16 copies of the largest target weight: on a GPU the allocator's
high-water mark (``torch.cuda.max_memory_allocated``), on the CPU the process's RSS high-water mark
(``/proc/self/clear_refs`` reset after loading, glibc's mmap threshold at 64 KiB so that freed blocks return to the
system; scipy's LAPACK loaded before).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.memory import measure_memory
from benchmarks.stats import median_ratio, summary
from benchmarks.tables import fmt_mb, fmt_s, markdown_table, ratios_table
from benchmarks.timing import device_sync, interleave
from benchmarks.train_cases import BETA, GAMMA, LLAMA_TARGETS, make_optimizer, make_step

QUANTS = ("nf4", "int8", "none")
VARIANTS = ("kasa", "lora", "peft_qlora")
SIZES: dict[str, dict[str, Any]] = {
    "full": {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
             "num_hidden_layers": 4, "vocab_size": 128256, "batch": (4, 1024), "r": 32},
    "cpu": {"hidden_size": 1024, "intermediate_size": 3584, "num_attention_heads": 8, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "vocab_size": 4096, "batch": (2, 128), "r": 16},
    "smoke": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 1, "vocab_size": 256, "batch": (2, 16), "r": 4},
}  # fmt: skip


def save_base(folder: Path, size: str) -> dict[str, Any]:
    """A LLaMA with the preset's layer shapes (``size``), random weights, saved in bf16 safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = {k: v for k, v in SIZES[size].items() if k not in ("batch", "r")}
    torch.manual_seed(0)
    config = LlamaConfig(**spec, max_position_embeddings=2048, tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return spec


def load(folder: Path, quant: str, device: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from kasa_lightning.kasa import QuantizationConfig

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if quant != "none":
        q = QuantizationConfig(bits=4, double_quant=True, compute_dtype="bfloat16") if quant == "nf4" else None
        config = (q or QuantizationConfig(bits=8)).to_bitsandbytes_config()
        kwargs.update(quantization_config=config, device_map={"": device if device == "cpu" else 0})
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if quant == "none":
        # transformers maps the checkpoint file (a private mapping) and reads a weight's pages when first touched; a
        # weight written in place then gets anonymous copies of them. Own copies first, so that the set-up peak
        # counts the set-up's own memory, not the model's pages becoming resident
        for p in model.parameters():
            p.data = p.data.clone()
        model = model.to(device)
    return model


def base_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the linear layers' weights as stored, with every quantisation constant; their bf16 bytes)."""
    from kasa_lightning.kasa import bnb

    stored = bf16 = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not getattr(model, "lm_head", None):
            out_f, in_f = bnb.quantized_shape(module)
            bf16 += out_f * in_f * 2
            w = module.weight
            stored += w.numel() * w.element_size()
            state = getattr(w, "quant_state", None)
            if state is not None:  # 4-bit: absmax (and, with double quantisation, its own absmax and code book)
                parts = [state.absmax, state.code]
                if state.state2 is not None:
                    parts += [state.state2.absmax, state.state2.code, state.offset]
                stored += sum(t.numel() * t.element_size() for t in parts if torch.is_tensor(t))
            scb = getattr(w, "SCB", None)
            if scb is None and hasattr(module, "state"):
                scb = module.state.SCB
            if scb is not None:  # 8-bit: one float32 scale per row
                stored += scb.numel() * scb.element_size()
    return stored, bf16


def _rss_tools() -> tuple[Any, Any]:
    """(reset, high-water mark in bytes) of the process RSS on Linux, or (None, None)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None, None
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD: freed large blocks go back to the system
    except OSError:
        pass

    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def hwm() -> int:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    return reset, hwm


def build(
    folder: Path, quant: str, variant: str, device: str, r: int, targets: list[str] | None = None
) -> tuple[nn.Module, Any, int | None]:
    """(model, regulariser or None, set-up peak in bytes above the loaded model, or None); ``targets``: the target
    modules (default: q/k/v/up/down)."""
    targets = list(targets or LLAMA_TARGETS)
    from kasa_lightning import AdapterConfig, adapter_loss, adapter_parameters, apply_adapters, extreme_triplets

    reset, hwm = _rss_tools()  # before loading: the model's freed loading buffers go back to the system too
    # scipy's LAPACK, the thread controller, and the BLAS libraries' own work buffers (kept by the process after
    # their first call, whatever the model) come before measuring: a weight through the Gram path, one through
    # the small SVD
    extreme_triplets(torch.randn(1024, 1024).bfloat16(), 16)
    extreme_triplets(torch.randn(256, 1024).bfloat16(), 16)  # a wide weight: the transposed path
    extreme_triplets(torch.randn(96, 64), 4)
    model = load(folder, quant, device)
    gc.collect()
    setup_peak = None
    if variant == "peft_qlora":
        import peft

        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets)
        model, reg = peft.get_peft_model(model, cfg), None
    else:
        config = AdapterConfig(method=variant, r=r, alpha=2 * r, target_modules=targets, beta=BETA,
                               gamma=GAMMA)  # fmt: skip
        cuda = device.startswith("cuda")
        if cuda:  # the allocator's high-water mark: the set-up's tensors on the GPU
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        elif reset is not None and device == "cpu":
            reset()
            before = hwm()
        apply_adapters(model, config)
        if cuda:
            torch.cuda.synchronize()
            setup_peak = torch.cuda.max_memory_allocated() - before
        elif reset is not None and device == "cpu":
            setup_peak = hwm() - before
        for p in adapter_parameters(model):
            p.data = p.data.float()
        reg = (lambda: adapter_loss(model)) if variant == "kasa" else None
    return model.train(), reg, setup_peak


def run_quant(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Every ``--quant`` base x every variant; returns (and prints) the tables and ratios."""
    quants = [q for q in args.quant.split(",") if q]
    bad = sorted(set(quants) - set(QUANTS))
    if bad:
        raise SystemExit(f"--quant: unknown {bad}; choose from {', '.join(QUANTS)}")
    if args.preset != "llama3-8b-layers":
        raise SystemExit("--quant runs with --preset llama3-8b-layers")
    size = "smoke" if args.smoke else args.quant_size
    repeats, steps = (1, 1) if args.smoke else (args.repeats or 5, 2)
    batch_n, seq = SIZES[size]["batch"]
    r = SIZES[size]["r"]
    sync = device_sync(device)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "base"
        spec = save_base(folder, size)
        ids = torch.randint(3, spec["vocab_size"], (batch_n, seq), generator=torch.Generator().manual_seed(1))
        batch = {"input_ids": ids.to(device), "labels": ids.to(device)}
        largest = max(spec["intermediate_size"], spec["hidden_size"]) * spec["hidden_size"] * 2  # one bf16 layer
        for quant in quants:
            blocks, memory, setup, stored = {}, {}, {}, None
            for variant in VARIANTS:
                model, reg, setup_peak = build(folder, quant, variant, device, r)
                if stored is None:
                    stored = base_bytes(model)
                opt = make_optimizer(model)
                step = make_step(model, reg, opt, batch, "bf16-mixed")
                step()  # AdamW state, lazy inits: excluded
                memory[variant] = measure_memory(model, opt, step, device)
                setup[variant] = setup_peak

                def block(step=step) -> float:  # noqa: ANN001
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        step()
                    sync()
                    return (time.perf_counter() - t0) / steps

                blocks[variant] = block
            times = interleave(blocks, repeats)
            results[quant] = {
                "times_s": times,
                "summary": summary(times),
                "memory": memory,
                "base_bytes": stored[0],
                "base_bf16_bytes": stored[1],
                "kasa_setup_peak_bytes": setup["kasa"],
                "bf16_layer_bytes": largest,
            }
            del blocks
            gc.collect()
    ratios = {}
    for quant, res in results.items():
        t, m = res["times_s"], res["memory"]
        ratios[f"kasa_vs_lora_step_{quant}"] = median_ratio(t["kasa"], t["lora"])
        ratios[f"kasa_vs_peft_qlora_step_{quant}"] = median_ratio(t["kasa"], t["peft_qlora"])
        ratios[f"kasa_vs_lora_peak_memory_{quant}"] = m["kasa"]["peak_bytes"] / m["lora"]["peak_bytes"]
        ratios[f"kasa_vs_peft_qlora_peak_memory_{quant}"] = m["kasa"]["peak_bytes"] / m["peft_qlora"]["peak_bytes"]
        ratios[f"base_vs_bf16_bytes_{quant}"] = res["base_bytes"] / res["base_bf16_bytes"]
    setup = {  # KaSA's set-up peak above the loaded model, in bf16 copies of the largest target weight
        quant: res["kasa_setup_peak_bytes"] / res["bf16_layer_bytes"]
        for quant, res in results.items()
        if res["kasa_setup_peak_bytes"] is not None
    }
    print(f"# Train step on quantised bases, llama3-8b-layers at {size} sizes {spec}, batch {batch_n} x seq {seq}, "
          f"r {r}, bf16 autocast, {device}, repeats {repeats} x {steps} steps")  # fmt: skip
    for quant, res in results.items():
        s, m = res["summary"], res["memory"]
        rows = [(v, fmt_s(s[v]["median_s"]), fmt_mb(m[v]["peak_bytes"]), fmt_mb(m[v]["persistent_bytes"])) for v in s]
        print(f"\n## base {quant}: linear weights {fmt_mb(res['base_bytes'])} MB "
              f"({res['base_bytes'] / res['base_bf16_bytes']:.3f}x bf16)\n")  # fmt: skip
        print(markdown_table(["variant", "step (median)", "peak MB", "persistent MB"], rows))
    print("\nRatios:\n")
    print(ratios_table(ratios))
    measure = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "process RSS high-water mark"
    print(f"\nKaSA set-up peak above the loaded model ({measure}), in bf16 copies of the largest target weight: "
          f"{setup}")  # fmt: skip
    return {"benchmark": "train_step_quant", "size": size, "spec": spec, "device": device, "bases": results,
            "ratios": ratios, "setup_peak_bf16_layers": setup, "setup_peak_measure": measure}  # fmt: skip


def setup_peak(folder: Path, quant: str, r: int, targets: list[str]) -> dict[str, Any]:
    """KaSA's set-up alone on the base saved in ``folder`` (``save_base``), on the CPU: its peak above the loaded
    model (bytes, and bf16 copies of the largest target weight) and its time. One base per process: the peak
    depends on what the process did before."""
    from kasa_lightning import adapted_layers

    start = time.perf_counter()
    model, _, peak = build(folder, quant, "kasa", "cpu", r, targets)
    seconds = time.perf_counter() - start
    largest = max(layer.out_features * layer.in_features for _, layer in adapted_layers(model))
    return {"quant": quant, "targets": targets, "r": r, "setup_peak_bytes": peak, "build_seconds": seconds,
            "setup_peak_bf16_layers": None if peak is None else peak / (2 * largest)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.train_quant --size full --quant nf4 [--targets q_proj,v_proj]``: the set-up peak alone
    (the training step at the real LLaMA-3-8B sizes does not fit a CPU run; ``train_step --quant`` times it)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--size", default="cpu", choices=sorted(SIZES), help="layer sizes (full: LLaMA-3-8B's)")
    parser.add_argument("--quant", default="nf4", choices=QUANTS, help="the base")
    parser.add_argument("--targets", default=",".join(LLAMA_TARGETS), help="comma-separated target modules")
    parser.add_argument("--folder", type=Path, help="a base saved by an earlier run of this size (saved if absent)")
    parser.add_argument("--save-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.save_only:
        save_base(args.folder, args.size)
        return {}
    with tempfile.TemporaryDirectory() as root:
        folder = args.folder or Path(root) / "base"
        if not (folder / "model.safetensors").is_file():
            # in a process of its own: building the model here would leave freed memory that the set-up reuses,
            # and the peak would depend on it (measured: 1.15 instead of 1.8 at cpu sizes)
            save = ["-m", "benchmarks.train_quant", "--save-only", "--size", args.size, "--folder", str(folder)]
            subprocess.run([sys.executable, *save], check=True)
        result = setup_peak(folder, args.quant, SIZES[args.size]["r"], targets)
    peak = result["setup_peak_bytes"]
    shown = (
        "not measured (needs Linux's /proc)"
        if peak is None
        else (f"{peak / 2**20:.1f} MiB, {result['setup_peak_bf16_layers']:.2f} bf16 copies of the largest target")
    )
    print(f"{args.quant}, {args.size} sizes, targets {','.join(targets)}, r {result['r']}: set-up peak above the "
          f"loaded model {shown}; {result['build_seconds']:.0f} s")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
