"""Run every benchmark (truncation, train_step, inference, quality, hot_paths); merge their ``ratios`` into one file.

Each script runs in its own Python process (clean memory and allocator state, its own thread settings), one after
the other, with ``--quick`` when given; its output streams through, its JSON is written next to the merged file
(``<json stem>.<script>.json``) and embedded in it under ``scripts``. The merged top-level ``ratios`` holds every
script's ratios (a key that two scripts share is prefixed with the script name). A script that fails is recorded
with its exit code, the others still run, and the exit status is non-zero.

    python -m benchmarks.run_all [--quick] [--json PATH] [--only train_step,inference] [--threads N]
                                 [--device cpu|cuda] [--profile]

``--threads N`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` for the scripts and passes
``--threads N`` to those
that take it (on a shared 2-core machine, 1 thread is often as fast as 2 and far steadier).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.results import header
from benchmarks.tables import markdown_table, ratios_table

HERE = Path(__file__).resolve().parent
SCRIPTS = ("truncation", "train_step", "inference", "quality", "hot_paths")
TAKES_COMMON_ARGS = {
    "train_step",
    "inference",
    "quality",
    "hot_paths",
}  # --threads, --device, --smoke (truncation has none)


def merge_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One flat ``ratios`` object from the scripts' results; a key two scripts share gets a ``<script>/`` prefix."""
    owners: dict[str, list[str]] = {}
    for script, result in results.items():
        for key in result.get("ratios", {}):
            owners.setdefault(key, []).append(script)
    merged: dict[str, float] = {}
    for script, result in results.items():
        for key, value in result.get("ratios", {}).items():
            merged[key if len(owners[key]) == 1 else f"{script}/{key}"] = value
    return merged


def command(
    script: str,
    json_path: str,
    quick: bool,
    smoke: bool,
    threads: int | None,
    device: str | None,
    profile: bool = False,
) -> list[str]:
    cmd = [sys.executable, "-m", f"benchmarks.{script}", "--json", json_path]
    if quick or (smoke and script not in TAKES_COMMON_ARGS):
        cmd.append("--quick")
    if script in TAKES_COMMON_ARGS:
        if smoke:
            cmd.append("--smoke")
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if device is not None:
            cmd += ["--device", device]
    if profile and script == "train_step":
        cmd.append("--profile")
    return cmd


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every script in its quick mode")
    parser.add_argument("--json", metavar="PATH", default="benchmark_results.json", help="the merged result file")
    parser.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads for every script")
    parser.add_argument("--device", default=None, help="passed to the scripts that take it")
    parser.add_argument("--profile", action="store_true", help="train_step also profiles KaSA against LoRA")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny sizes
    args = parser.parse_args(argv)
    scripts = [s for s in args.only.split(",") if s]
    unknown = sorted(set(scripts) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown scripts {unknown}; choose from {list(SCRIPTS)}")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # `python -m benchmarks.<name>` from any folder: the repository root on the children's path
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for script in scripts:
        path = out.with_name(f"{out.stem}.{script}.json")
        if path.exists():
            path.unlink()
        cmd = command(script, str(path), args.quick, args.smoke, args.threads, args.device, args.profile)
        print(f"\n===== {script}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        wall = time.perf_counter() - t0
        runs[script] = {"command": cmd, "returncode": rc, "wall_s": wall, "json": str(path)}
        if rc == 0 and path.exists():
            with open(path) as f:
                results[script] = json.load(f)
        else:
            print(f"===== {script} FAILED (exit code {rc})", flush=True)
    wall_all = time.perf_counter() - t_all

    ratios = merge_ratios(results)
    failed = [s for s, r in runs.items() if r["returncode"] != 0]
    merged = {
        **header(),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "wall_s": wall_all,
        "runs": runs,
        "failed": failed,
        "scripts": results,
        "ratios": ratios,
    }
    with open(out, "w") as f:
        json.dump(merged, f, indent=2)

    print(f"\n===== all benchmarks ({merged['mode']} mode): {wall_all:.0f} s wall\n")
    rows = []
    for script, run in runs.items():
        probe = results.get(script, {}).get("probe_gflops", {})
        moved = probe.get("change")
        if moved is None and probe.get("before"):
            moved = abs(probe["after"] - probe["before"]) / probe["before"]
        rows.append(
            (
                script,
                f"{run['wall_s']:.0f} s",
                "ok" if run["returncode"] == 0 else f"FAILED ({run['returncode']})",
                "-" if moved is None else f"{100 * moved:.0f}%" + (" NOISY" if moved > 0.2 else ""),
            )
        )
    print(markdown_table(["script", "wall", "status", "matmul probe moved"], rows))
    print("\nAll ratios (ours / theirs, or as each script defines them):\n")
    print(ratios_table(ratios))
    print(f"\nwritten: {out}")
    if failed:
        raise SystemExit(1)
    return merged


if __name__ == "__main__":
    main()
