"""``train_step --profile``: a torch.profiler breakdown of our KaSA step against our LoRA step (top operators by
self CPU time, the largest per-step differences) and a timing of the step's components."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from benchmarks.machine import silent_stderr
from benchmarks.stats import median
from benchmarks.tables import fmt_s, markdown_table
from benchmarks.timing import interleave, per_call
from benchmarks.train_cases import (
    Case,
)


def profile_steps(steps: dict[str, Callable[[], None]], rounds: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and operator: self CPU time (us per step) and calls per step. The variants' steps are profiled
    in turn (A B A B ...), one profiler run per step, so that a drift of the machine hits both alike."""
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
