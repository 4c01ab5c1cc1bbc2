"""Benchmark: KaSA's SVD truncation, our routine vs. a per-layer float32 full SVD (what PEFT does).

KaSA drops the r smallest singular triplets of each frozen weight W (out m x in n), keeping
W_world = W - U_r diag(s_r) V_r^T. For each weight group this script measures

* ours cold:  ``extreme_triplets(W, r, "minor")`` with no cache, then W - u_s v^T in float32 (one addmm, as
              ``AdaptedLayer`` folds it into the weight);
* ours warm:  the same with a filled ``cache_dir`` (fingerprint + load from disk + reconstruction);
* fp32 SVD:   ``torch.linalg.svd(W.float())`` and the rank-(k - r) reconstruction, as PEFT's KaSA does;

and the reconstruction error ||W_world - W_world_exact||_F of both, the exact one from a float64 full SVD
(computed outside the timing). Weights: the 12 query/value weights of pretrained all-MiniLM-L6-v2 (384x384)
and synthetic weights with a decaying spectrum (1024x1024, 1024x4096, 4096x1024; 4096x4096 in full mode).

Timings are interleaved (ours, then theirs, per weight) and repeated; the table shows median times and the
median over repeats of the per-repeat ratio (speedup = fp32 SVD time / our time). As the shared CPU machines
drift, the torch thread count and a 1024x1024 fp32 matmul throughput probe are recorded before and after;
a run whose probe moved by more than 20% is flagged noisy.

    python -m benchmarks.truncation [--quick] [--json PATH] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
from safetensors.torch import load_file

from benchmarks.machine import MINILM, matmul_gflops
from benchmarks.results import header
from kasa_lightning.kasa.svd import extreme_triplets

R = 8


def minilm_weights() -> list[torch.Tensor]:
    from kasa_lightning.hub import resolve_pretrained

    path = os.path.join(resolve_pretrained(MINILM), "model.safetensors")
    state = load_file(path)
    keys = sorted(k for k in state if k.endswith(("attention.self.query.weight", "attention.self.value.weight")))
    return [state[k].float() for k in keys]


def synthetic_weight(m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U, V and a power-law spectrum s_i ~ (i + 1)^-0.5."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = 2.0 * torch.arange(1, k + 1, dtype=torch.float64) ** -0.5
    return ((u * s) @ v.T).float()


def weight_groups(quick: bool) -> list[tuple[str, list[torch.Tensor]]]:
    count = 1 if quick else 4
    shapes = [(1024, 1024), (1024, 4096), (4096, 1024)] + ([] if quick else [(4096, 4096)])
    groups = [("MiniLM-L6 query/value", minilm_weights())]
    for i, (m, n) in enumerate(shapes):
        n_weights = 1 if m * n > 4096 * 1024 else count
        groups.append((f"synthetic {m}x{n}", [synthetic_weight(m, n, seed=100 * i + j) for j in range(n_weights)]))
    return groups


def ours(w: torch.Tensor, cache_dir: str | None) -> torch.Tensor:
    """What ``AdaptedLayer`` holds after truncation: the float32 weight minus the r minor triplets' part."""
    t = extreme_triplets(w, R, which="minor", cache_dir=cache_dir)
    return torch.addmm(w, t.us.float(), t.v.float().T, alpha=-1)


def fp32_svd(w: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    keep = min(w.shape) - R
    return (u[:, :keep] * s[:keep]) @ vh[:keep]


def exact_world(w: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    keep = min(w.shape) - R
    return (u[:, :keep] * s[:keep]) @ vh[:keep]


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_group(name: str, weights: list[torch.Tensor], repeats: int, cache_root: str) -> dict:
    cache_dir = os.path.join(cache_root, name.replace(" ", "_").replace("/", "_"))
    err_ours = err_svd = 0.0
    for w in weights:  # errors (and cache filling) outside the timing
        exact = exact_world(w)
        err_ours = max(err_ours, (ours(w, cache_dir).double() - exact).norm().item())
        err_svd = max(err_svd, (fp32_svd(w).double() - exact).norm().item())
    cold, warm, svd = [], [], []
    for _ in range(repeats):  # one repeat: every weight once by each method, interleaved
        c = wa = sv = 0.0
        for w in weights:
            c += timed(ours, w, None)
            wa += timed(ours, w, cache_dir)
            sv += timed(fp32_svd, w)
        cold, warm, svd = cold + [c], warm + [wa], svd + [sv]
    m, n = weights[0].shape
    return {
        "group": name,
        "shape": [m, n],
        "count": len(weights),
        "ours_cold_s": statistics.median(cold),
        "ours_warm_s": statistics.median(warm),
        "fp32_svd_s": statistics.median(svd),
        "speedup_cold": statistics.median(s / c for s, c in zip(svd, cold)),
        "speedup_warm": statistics.median(s / w for s, w in zip(svd, warm)),
        "error_ours": err_ours,
        "error_fp32_svd": err_svd,
        "repeats_s": {"ours_cold": cold, "ours_warm": warm, "fp32_svd": svd},
    }


def overall_ratio(rows: list[dict], ours_key: str) -> float:
    """Median over repeats of (total fp32 SVD time / total time of ours) over all groups."""
    theirs = [sum(t) for t in zip(*(r["repeats_s"]["fp32_svd"] for r in rows))]
    mine = [sum(t) for t in zip(*(r["repeats_s"][ours_key] for r in rows))]
    return statistics.median(t / o for t, o in zip(theirs, mine))


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| weights | ours cold s | ours warm s | fp32 SVD s | speedup cold | speedup warm "
        "| error ours | error fp32 SVD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} ({r['shape'][0]}x{r['shape'][1]}, x{r['count']}) | {r['ours_cold_s']:.3f} "
            f"| {r['ours_warm_s']:.3f} | {r['fp32_svd_s']:.3f} | {r['speedup_cold']:.1f}x "
            f"| {r['speedup_warm']:.1f}x | {r['error_ours']:.2e} | {r['error_fp32_svd']:.2e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM + one weight of each 1024-wide shape")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3, quick 1)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)

    groups = weight_groups(args.quick)
    threads = torch.get_num_threads()
    probe_before = matmul_gflops()
    with tempfile.TemporaryDirectory() as cache_root:
        rows = [bench_group(name, weights, repeats, cache_root) for name, weights in groups]
    probe_after = matmul_gflops()
    drift = abs(probe_after - probe_before) / probe_before
    ratios = {
        "truncation_speedup_cold": overall_ratio(rows, "ours_cold"),
        "truncation_speedup_warm": overall_ratio(rows, "ours_warm"),
    }

    print(f"r={R}, repeats={repeats}, torch threads={threads}, torch {torch.__version__}, {platform.platform()}")
    print(markdown_table(rows))
    print(
        f"\noverall speedup (total time): cold {ratios['truncation_speedup_cold']:.1f}x, "
        f"warm {ratios['truncation_speedup_warm']:.1f}x"
    )
    noisy = drift > 0.2  # the probe moved, so did the machine (benchmarks/README.md)
    print(
        f"matmul probe: {probe_before:.1f} -> {probe_after:.1f} GFLOP/s ({100 * drift:.0f}% change)"
        + ("  NOISY RUN: the machine's speed moved, treat the timings with care" if noisy else "")
    )

    if args.json:
        result = {
            **header(),  # machine, date, command
            "r": R,
            "repeats": repeats,
            "probe_gflops": {"before": probe_before, "after": probe_after, "noisy": noisy},
            "rows": rows,
            "ratios": ratios,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
