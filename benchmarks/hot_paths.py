"""Benchmark: the hot paths profiling found slow, each timed against the way it was done before, in one run.

* ``regularizer``: forward + backward of beta * L2 + gamma * L3 over every adapted layer of a LLaMA-shaped model
  (20 layers, 2 shapes), as ``adapter_loss`` now does it (layers of equal shape stacked, one batched pass) against
  the earlier per-layer loop (``layer_terms`` for each layer, then a sum). Both give the same value (checked).
* ``adamw``: one AdamW step over the same adapter tensors, ``fused=True`` (KaSAModule's default now) against the
  default ``foreach`` implementation.
* ``fingerprint``: the disk-cache key of a 4096 x 1024 weight, xxh3-128 over a view of its bytes (now) against
  blake2b over a copy of them (before).
* ``fold``: subtracting the removed rank-r part from a 4096 x 1024 float32 weight, one in-place ``addmm_`` (now)
  against forming D = u v^T, adding in float32 and copying back (before).
* ``adapter_add``: forward + backward (input gradient included, a fixed random output gradient) of one adapted
  MiniLM-sized layer (384 x 384, r 8, 4096 tokens = batch 32 x seq 128), ``AdaptedLayer`` as it is now (input
  flattened to (tokens, in), the update accumulated into the Linear's fresh 2-D output by one in-place ``addmm_``)
  against the first out-of-place ``y + h @ dU^T``.
* ``adapter_add_view``: the same, now against the in-place ``addmm_`` on a 2-D *view* of the 3-D output (the
  previous implementation), whose backward goes through a CopySlices node that clones the output gradient.
  All three give the same output (checked).

* ``regularizer_host``: the host time of one ``adapter_loss(model)`` call (forward only) for 160 adapted layers: a
  LLaMA-7B module tree (32 decoder layers, targets q,k,v,up,down, r 8) at tiny widths (hidden 64), so that the time is
  the dispatch and Python overhead a GPU run pays per step, not CPU arithmetic. Now: the cached layer list, one
  stack per (rows, r) group of dU and dV together and one of all dsigma, per-layer terms only when read; before
  (``previous_adapter_loss``, the implementation this replaced): a walk of every module on every call, one group per
  (dU shape, dV shape), a stack per tensor kind and group, and per-layer unbinds on every call. Same value (checked).

Timing as the other scripts (``benchmarks/README.md``): interleaved blocks, rotating order, warm-up excluded, medians;
each speed-up is the median over repeats of (before / now).

    python -m benchmarks.hot_paths [--quick] [--json PATH] [--repeats N] [--threads N] [--paths adapter_add,...]
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.cli import add_common_arguments, pick_device
from benchmarks.machine import Probe, quiet, torch_threads
from benchmarks.results import write_json
from benchmarks.stats import median, median_ratio
from benchmarks.tables import fmt_s, markdown_table
from benchmarks.timing import device_sync, interleave, per_call
from kasa_lightning.kasa import (
    AdapterConfig,
    adapted_layers,
    adapter_config,
    adapter_loss,
    adapter_parameters,
    apply_adapters,
)
from kasa_lightning.kasa.svd import weight_fingerprint
from kasa_lightning.kasa.terms import layer_terms

REQUIRED = (
    "regularizer_host_speedup",
    "regularizer_speedup",
    "adamw_fused_speedup",
    "fingerprint_speedup",
    "fold_speedup",
    "adapter_add_speedup",
    "adapter_add_view_speedup",
)


def llama_model(smoke: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    size = (
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        if smoke
        else {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4}
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, num_attention_heads=4, **size))
    cfg = AdapterConfig(
        r=8,
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        beta=1e-4,
        gamma=1e-3,
        reg_form="paper",
    )
    model = apply_adapters(model, cfg)
    for p in adapter_parameters(model):  # trained-looking values: the regulariser is not at its minimum
        torch.nn.init.normal_(p, std=0.1)
    return model


def per_layer_loss(model: torch.nn.Module) -> torch.Tensor:
    """The earlier implementation: one ``layer_terms`` call per layer, then sums (reduction "sum")."""
    config = adapter_config(model)
    terms = [layer_terms(x.delta_u, x.delta_sigma, x.delta_v, config.reg_form) for _, x in adapted_layers(model)]
    return (
        config.beta * torch.stack([t.l2 for t in terms]).sum() + config.gamma * torch.stack([t.l3 for t in terms]).sum()
    )


def llama7b_tree(smoke: bool) -> torch.nn.Module:
    """LLaMA-7B's module tree (32 decoder layers; smoke: 2) at tiny widths, KaSA on q,k,v,up,down: 160 layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=172,
            num_attention_heads=4,
            num_hidden_layers=2 if smoke else 32,
        )
    )
    model = apply_adapters(
        model,
        AdapterConfig(
            r=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], beta=1e-4, gamma=1e-3
        ),
    )
    for p in adapter_parameters(model):
        torch.nn.init.normal_(p, std=0.1)
    return model


def previous_adapter_loss(model: torch.nn.Module) -> torch.Tensor:
    """The implementation ``adapter_loss`` replaced, kept here for the comparison: it walked every module
    on every call, grouped layers by (dU shape, dV shape), stacked dU, dV and dsigma per group, and split the
    per-layer terms out with unbinds on every call."""
    config = adapter_config(model)
    layers = list(adapted_layers(model))
    groups: dict[tuple, list] = {}
    for name, layer in layers:
        u, v, sigma = layer.delta_u, layer.delta_v, layer.delta_sigma
        groups.setdefault((tuple(u.shape), tuple(v.shape), sigma is not None, u.device, u.dtype), []).append(
            (name, layer)
        )
    terms, l2_sums, l3_sums = {}, [], []
    for members in groups.values():
        group_layers = [layer for _, layer in members]
        sigma = torch.stack([x.delta_sigma for x in group_layers]) if group_layers[0].delta_sigma is not None else None
        group = layer_terms(
            torch.stack([x.delta_u for x in group_layers]),
            sigma,
            torch.stack([x.delta_v for x in group_layers]),
            config.reg_form,
            config.gamma > 0,
        )
        l2_sums.append(group.l2.sum())
        l3_sums.append(group.l3.sum())
        for (name, _), l2, l3 in zip(members, group.l2.unbind(), group.l3.unbind()):
            terms[name] = (l2, l3)
    return config.beta * torch.stack(l2_sums).sum() + config.gamma * torch.stack(l3_sums).sum()


def adapted_linear(smoke: bool, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """One KaSA-adapted 384 x 384 Linear with non-zero adapters, and an input of 4096 tokens (smoke: tiny)."""
    torch.manual_seed(0)
    width, tokens = (32, 64) if smoke else (384, 4096)
    layer = apply_adapters(  # one layer: its own parameters (stacking gains nothing)
        torch.nn.Sequential(torch.nn.Linear(width, width)), AdapterConfig(r=8, target_modules=["0"]), stacked=False
    )[0].to(device)
    for p in layer.adapter_parameters():
        torch.nn.init.normal_(p, std=0.1)
    return layer, torch.randn(tokens // 32, 32, width, device=device, requires_grad=True)


def out_of_place_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first AdaptedLayer forward (fold mode, no dropout): the update added out of place."""
    y = layer.base_layer(x)
    h = (x @ layer.delta_v) * (layer.delta_sigma * layer.scaling)
    return y + h @ layer.delta_u.T


def view_in_place_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The previous AdaptedLayer forward: ``addmm_`` into a 2-D view of the 3-D base output."""
    y = layer.base_layer(x)
    h = (x @ layer.delta_v) * (layer.delta_sigma * layer.scaling)
    return y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), layer.delta_u.T).view(y.shape)


def blake2b_copy(weight: torch.Tensor) -> str:
    w = weight.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{w.dtype}{tuple(w.shape)}".encode())
    h.update(w.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ratio key -> (hot path, its "before" block); every "now" block is "<hot path> now"
COMPARED = {
    "regularizer_host_speedup": ("regularizer_host", "regularizer_host before"),
    "regularizer_speedup": ("regularizer", "regularizer before"),
    "adamw_fused_speedup": ("adamw", "adamw before"),
    "fingerprint_speedup": ("fingerprint", "fingerprint before"),
    "fold_speedup": ("fold", "fold before"),
    "adapter_add_speedup": ("adapter_add", "adapter_add before"),
    "adapter_add_view_speedup": ("adapter_add", "adapter_add_view before"),
}
Blocks = dict[str, Any]


def regularizer_blocks(smoke: bool, device: str, calls: int, sync: Callable[[], None]) -> Blocks:
    model = llama_model(smoke).to(device)
    params = adapter_parameters(model)
    torch.testing.assert_close(adapter_loss(model), per_layer_loss(model), rtol=1e-5, atol=1e-7)  # same value

    def backward(loss_fn):  # noqa: ANN001, ANN202
        def run() -> None:
            for p in params:
                p.grad = None
            loss_fn(model).backward()

        return run

    return {
        "regularizer now": per_call(backward(adapter_loss), calls, sync),
        "regularizer before": per_call(backward(per_layer_loss), calls, sync),
    }


def regularizer_host_blocks(smoke: bool, device: str, calls: int, sync: Callable[[], None]) -> Blocks:
    model = llama7b_tree(smoke).to(device)
    torch.testing.assert_close(adapter_loss(model), previous_adapter_loss(model), rtol=1e-5, atol=1e-6)
    n = 5 * calls
    return {
        "regularizer_host now": per_call(lambda: adapter_loss(model), n, sync),
        "regularizer_host before": per_call(lambda: previous_adapter_loss(model), n, sync),
    }


def adamw_blocks(smoke: bool, device: str, calls: int, sync: Callable[[], None]) -> Blocks:
    params = adapter_parameters(llama_model(smoke).to(device))
    for p in params:
        p.grad = torch.randn_like(p)
    fused = torch.optim.AdamW(params, lr=1e-6, fused=True)
    foreach = torch.optim.AdamW(params, lr=1e-6, foreach=True)
    return {"adamw now": per_call(fused.step, calls, sync), "adamw before": per_call(foreach.step, calls, sync)}


def _weight(smoke: bool, device: str) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(*((256, 64) if smoke else (4096, 1024)), device=device)


def fingerprint_blocks(smoke: bool, device: str, calls: int, sync: Callable[[], None]) -> Blocks:
    weight = _weight(smoke, device)
    return {
        "fingerprint now": per_call(lambda: weight_fingerprint(weight), calls, sync),
        "fingerprint before": per_call(lambda: blake2b_copy(weight), calls, sync),
    }


def fold_blocks(smoke: bool, device: str, calls: int, sync: Callable[[], None]) -> Blocks:
    weight = _weight(smoke, device)
    u, v = torch.randn(weight.shape[0], 8, device=device), torch.randn(weight.shape[1], 8, device=device)

    def fold_now() -> None:
        weight.addmm_(u, v.T, alpha=-1.0)

    def fold_before() -> None:
        weight.copy_((weight.float() - u @ v.T).to(weight.dtype))

    return {"fold now": per_call(fold_now, calls, sync), "fold before": per_call(fold_before, calls, sync)}


def adapter_add_blocks(smoke: bool, device: str, calls: int, sync: Callable[[], None]) -> Blocks:
    layer, tokens = adapted_linear(smoke, device)
    for other in (out_of_place_forward, view_in_place_forward):
        torch.testing.assert_close(layer(tokens), other(layer, tokens), rtol=1e-5, atol=1e-5)
    layer_params = layer.adapter_parameters()
    grad_out = torch.randn(*tokens.shape[:-1], layer.out_features, device=device)

    def layer_step(forward):  # noqa: ANN001, ANN202
        def run() -> None:
            for p in (*layer_params, tokens):
                p.grad = None
            forward(tokens).backward(grad_out)

        return run

    n = max(1, calls // 2)
    return {
        "adapter_add now": per_call(layer_step(layer), n, sync),
        "adapter_add_view before": per_call(layer_step(lambda t: view_in_place_forward(layer, t)), n, sync),
        "adapter_add before": per_call(layer_step(lambda t: out_of_place_forward(layer, t)), n, sync),
    }


SETUP = {
    "regularizer_host": regularizer_host_blocks,
    "regularizer": regularizer_blocks,
    "adamw": adamw_blocks,
    "fingerprint": fingerprint_blocks,
    "fold": fold_blocks,
    "adapter_add": adapter_add_blocks,
}
PATHS = tuple(SETUP)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated hot paths to time (default all: {','.join(PATHS)}); one path alone is "
        "timed without the others' allocations in the process",
    )
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or not paths:
        parser.error(f"--paths: unknown hot paths {unknown}; choose from {','.join(PATHS)}")
    quiet()
    repeats = args.repeats or (3 if args.smoke else 7 if args.quick else 15)
    calls = 2 if args.smoke else 20
    device = pick_device(args.device)
    sync = device_sync(device)
    with torch_threads(args.threads) as threads:
        blocks: Blocks = {}
        for path in paths:
            blocks.update(SETUP[path](args.smoke, device, calls, sync))
        probe = Probe().start()
        times = interleave(blocks, repeats=repeats, warmup=1)
        probe.stop()

    compared = {key: value for key, value in COMPARED.items() if value[0] in paths}
    ratios = {key: median_ratio(times[before], times[f"{name} now"]) for key, (name, before) in compared.items()}
    rows = [
        [
            key.removesuffix("_speedup"),
            fmt_s(median(times[before])),
            fmt_s(median(times[f"{name} now"])),
            f"{ratios[key]:.2f}x",
        ]
        for key, (name, before) in compared.items()
    ]
    print(f"repeats={repeats}, device={device}, torch threads={threads}, torch {torch.__version__}")
    print(markdown_table(["hot path", "before", "now", "speed-up"], rows))
    print(probe.describe())
    result = {
        "benchmark": "hot_paths",
        "paths": paths,
        "repeats": repeats,
        "probe_gflops": probe.as_dict(),
        "times_s": times,
        "ratios": ratios,
    }
    if args.json:
        write_json(args.json, result, device)
    return result


if __name__ == "__main__":
    main()
