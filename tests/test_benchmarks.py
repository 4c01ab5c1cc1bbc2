"""Smoke tests of the benchmark scripts (``benchmarks/``): their main functions run end to end at tiny sizes (the
hidden ``--smoke`` flag) and write JSON with the required, finite and positive ``ratios``. No timing value is
asserted: on shared CPU machines they are noise at these sizes."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _restore_logging():
    """The scripts quiet Lightning's and transformers' loggers for their own process (``benchmarks.machine.quiet``);
    run in-process here, they must leave the levels as they found them for the tests that read those logs."""
    import logging

    import datasets
    import transformers

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets")
    levels = {name: logging.getLogger(name).level for name in names}
    verbosity = transformers.logging.get_verbosity(), datasets.logging.get_verbosity()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    transformers.logging.set_verbosity(verbosity[0])
    transformers.logging.enable_progress_bar()
    datasets.logging.set_verbosity(verbosity[1])
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def bench():
    """Import a benchmark script as a module of the ``benchmarks`` package (the repository root is on the path)."""
    return lambda name: importlib.import_module(f"benchmarks.{name}")


def _check(result: dict, path: Path, required) -> dict:  # noqa: ANN001
    written = json.loads(path.read_text())
    for key in ("machine", "date", "command", "ratios"):
        assert key in written, key
    assert written["machine"]["threads"] >= 1
    ratios = written["ratios"]
    assert set(required) <= set(ratios), sorted(set(required) - set(ratios))
    for key, value in ratios.items():
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert written["ratios"] == pytest.approx(result["ratios"])
    return written


def test_common_helpers(tmp_path):
    from benchmarks import machine, results, stats, tables, timing

    calls = []
    blocks = {name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}
    times = timing.interleave(blocks, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotating order
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert stats.median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    with pytest.raises(ValueError):
        stats.median_ratio([1.0], [1.0, 2.0])
    assert timing.per_call(lambda: None, 3)() >= 0
    assert results.check_ratios({"x": 1.0, "y": float("nan")}, ["x", "z"]) == [
        "missing ratio 'z'",
        "ratio 'y' = nan is not finite and positive",
    ]
    probe = machine.Probe(size=64, calls=2).start().stop()
    assert probe.before > 0 and probe.after > 0 and isinstance(probe.noisy, bool)
    with pytest.raises(ValueError, match="ratios"):
        results.write_json(str(tmp_path / "x.json"), {"rows": []})
    written = results.write_json(str(tmp_path / "x.json"), {"ratios": {"a": 1.5}})
    assert written["command"] and written["date"] and written["machine"]["cpu_count"]
    table = tables.markdown_table(["a", "b"], [(1, 2)])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| 1 | 2 |"]
    import torch

    before = torch.get_num_threads()
    with machine.torch_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_train_step_smoke(bench, tmp_path):
    train_step = bench("train_step")
    path = tmp_path / "train_step.json"
    result = train_step.main(["--smoke", "--json", str(path)])
    written = _check(
        result, path, [*train_step.REQUIRED, *(f"{k}_{c}" for k in train_step.REQUIRED for c in ("minilm", "llama"))]
    )
    for case in written["cases"]:
        assert set(case["times_s"]) == set(train_step.VARIANTS)
        assert all(m["peak_bytes"] > m["persistent_bytes"] > 0 for m in case["memory"].values())


@pytest.mark.parametrize(
    "variants",
    ["kasa,lora,peft_kasa", pytest.param("kasa,lora,peft_kasa,kasa_compiled,lora_compiled", marks=pytest.mark.slow)],
)
def test_train_step_presets_smoke(bench, tmp_path, variants):
    """The GPU presets' code path on the CPU at tiny sizes: bf16 autocast, float32 adapters on a bf16 base, PEFT
    KaSA beside ours; the compiled variants (aot_eager backend, about a minute on 2 busy cores) are marked slow."""
    train_step = bench("train_step")
    path = tmp_path / "presets.json"
    result = train_step.main(
        [
            "--preset",
            "llama3-8b-layers",
            "--smoke",
            "--device",
            "cpu",
            "--compile-backend",
            "aot_eager",
            "--variants",
            variants,
            "--json",
            str(path),
        ]
    )
    case = "llama3-8b-layers/bf16-mixed"
    compiled = "compiled" in variants
    required = [f"kasa_vs_lora_step_{case}", f"kasa_vs_peft_kasa_step_{case}"]
    required += [f"kasa_vs_lora_step_compiled_{case}", f"compiled_kasa_vs_peft_kasa_step_{case}"] if compiled else []
    written = _check(result, path, required)
    (run,) = written["cases"]
    assert set(run["times_s"]) == set(variants.split(","))
    assert written["compile_backend"] == "aot_eager" and run["precision"] == "bf16-mixed"
    with pytest.raises(SystemExit):
        train_step.main(["--preset", "gpt5", "--smoke", "--device", "cpu"])


def test_train_step_quant_smoke(bench, tmp_path):
    """``--preset llama3-8b-layers --quant nf4,int8,none`` at tiny sizes: a saved base loaded through bitsandbytes,
    our KaSA and LoRA and PEFT's QLoRA on each."""
    pytest.importorskip("bitsandbytes")
    train_step = bench("train_step")
    path = tmp_path / "quant.json"
    args = ["--preset", "llama3-8b-layers", "--quant", "nf4,int8,none", "--smoke", "--device", "cpu"]
    result = train_step.main([*args, "--json", str(path)])
    required = [f"{k}_{q}" for k in ("kasa_vs_lora_step", "kasa_vs_lora_peak_memory", "base_vs_bf16_bytes")
                for q in ("nf4", "int8", "none")]  # fmt: skip
    written = _check(result, path, required)
    assert set(written["bases"]) == {"nf4", "int8", "none"}
    assert written["ratios"]["base_vs_bf16_bytes_none"] == 1.0
    assert written["setup_peak_measure"] == "process RSS high-water mark"
    if os.path.exists("/proc/self/clear_refs"):  # Linux: KaSA's set-up peak is measured on every base
        assert set(written["setup_peak_bf16_layers"]) == {"nf4", "int8", "none"}
    # the storage with its constants: NF4 codes are half a byte, int8 one byte, per parameter
    assert 0.25 < written["ratios"]["base_vs_bf16_bytes_nf4"] < written["ratios"]["base_vs_bf16_bytes_int8"] < 0.6
    with pytest.raises(SystemExit, match="--quant: unknown"):
        train_step.main(["--preset", "llama3-8b-layers", "--quant", "nf3", "--smoke", "--device", "cpu"])


def test_train_quant_setup_peak_alone(bench, tmp_path):
    """``python -m benchmarks.train_quant``: KaSA's set-up alone on a saved base (saved in a process of its own),
    with the targets asked for."""
    pytest.importorskip("bitsandbytes")
    train_quant = bench("train_quant")
    result = train_quant.main(["--size", "smoke", "--quant", "nf4", "--targets", "q_proj,v_proj",
                               "--folder", str(tmp_path / "base")])  # fmt: skip
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert result["targets"] == ["q_proj", "v_proj"] and result["r"] == 4 and result["build_seconds"] > 0
    if os.path.exists("/proc/self/clear_refs"):
        assert result["setup_peak_bytes"] is not None and result["setup_peak_bf16_layers"] is not None


@pytest.mark.slow
def test_gpu_check_script_cpu_smoke(tmp_path):
    """benchmarks/gpu_check.sh end to end on the CPU path: tests/test_gpu.py (skipped here) and both presets at tiny
    sizes, merged into one JSON."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--cpu-smoke", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    merged = json.loads(out.read_text())
    assert merged["smoke"] and merged["tests"]["returncode"] == 0 and merged["presets_returncode"] == 0
    assert merged["tests"]["tests"] >= 1
    assert {c["case"] for c in merged["presets"]["cases"]} == {
        "roberta-base/32-true",
        "roberta-base/bf16-mixed",
        "llama3-8b-layers/bf16-mixed",
    }
    assert merged["ratios"]["kasa_vs_lora_step_compiled_roberta-base/32-true"] > 0
    if merged["quant"] is not None:  # bitsandbytes installed
        assert merged["quant_returncode"] == 0 and merged["ratios"]["base_vs_bf16_bytes_nf4"] < 0.6


def test_inference_smoke(bench, tmp_path):
    inference = bench("inference")
    path = tmp_path / "inference.json"
    result = inference.main(["--smoke", "--json", str(path)])
    written = _check(result, path, inference.REQUIRED)
    assert set(written["times_s"]) == set(inference.VARIANTS)
    assert max(written["merged_max_abs_diff"].values()) < 1e-4  # merging does not change the outputs


@pytest.mark.slow
def test_quality_smoke(bench, tmp_path):
    if not (SHARED_DATA / "glue" / "RTE" / "train.tsv").is_file():
        pytest.skip("the shared GLUE fixtures are not here")
    quality = bench("quality")
    path = tmp_path / "quality.json"
    result = quality.main(
        [
            "--smoke",
            "--methods",
            "kasa,lora,peft_kasa",
            "--data-dir",
            str(SHARED_DATA / "glue"),
            "--json",
            str(path),
            "--output-dir",
            str(tmp_path / "sweep"),
        ]
    )
    written = _check(
        result, path, ["kasa_vs_peft_kasa_accuracy", "kasa_vs_lora_accuracy", "kasa_vs_peft_kasa_accuracy_rte"]
    )
    assert "NOT statistically meaningful" in written["note"]
    assert {r["method"] for r in written["runs"]} == {"kasa", "lora", "peft_kasa"}
    assert all(r["steps"] > 0 for r in written["runs"])
    assert set(written["comparisons"]) == {"kasa_vs_peft_kasa_rte", "kasa_vs_lora_rte"}
    assert written["comparisons"]["kasa_vs_lora_rte"]["reason"]  # one seed: no test is claimed
    assert written["train_files"] == {"rte": "train.tsv"}
    # a preset over sweep + report: the numbers are the report's, which reads the runs' own metric files
    entries = json.loads((tmp_path / "sweep" / "results.json").read_text())
    accuracy = {e["method"]: e["values"] for e in entries if e["metric"] == "val/accuracy"}
    assert accuracy == {m: written["table"]["rte"][m]["accuracy"]["values"] for m in ("kasa", "lora", "peft_kasa")}
    for run in written["runs"]:
        fit = json.loads((tmp_path / "sweep" / "rte" / run["method"] / "seed0" / "metrics.json").read_text())["fit"]
        assert run["steps"] == fit["global_step"]
        assert run["metrics"]["val/accuracy_best"] == max(e["metrics"]["val/accuracy"] for e in fit["epochs"])


def test_quality_picks_the_training_file(bench, tmp_path):
    import argparse

    quality = bench("quality")
    parser = argparse.ArgumentParser()
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.from-test-labeled.tsv").write_text("sentence\tlabel\n")
    assert quality.train_file(tmp_path / "SST-2", None, parser) == "train.from-test-labeled.tsv"
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    assert quality.train_file(tmp_path / "SST-2", None, parser) == "train.tsv"
    with pytest.raises(SystemExit):  # a named file that is not there is an error that names --train-file
        quality.train_file(tmp_path / "SST-2", "missing.tsv", parser)


def test_run_all_merges_ratios(bench):
    run_all = bench("run_all")
    merged = run_all.merge_ratios(
        {"a": {"ratios": {"x": 1.0, "shared": 2.0}}, "b": {"ratios": {"shared": 3.0}}, "c": {}}
    )
    assert merged == {"x": 1.0, "a/shared": 2.0, "b/shared": 3.0}
    cmd = run_all.command("truncation", "t.json", quick=True, smoke=False, threads=1, device=None)
    assert cmd[-3:] == ["--json", "t.json", "--quick"]  # truncation takes no --threads/--smoke
    cmd = run_all.command("inference", "i.json", quick=False, smoke=True, threads=1, device=None)
    assert "--smoke" in cmd and cmd[-2:] == ["--threads", "1"]


@pytest.mark.slow
def test_run_all_end_to_end(tmp_path):
    out = tmp_path / "all.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--smoke", "--only", "inference", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    merged = json.loads(out.read_text())
    assert merged["failed"] == [] and set(merged["scripts"]) == {"inference"}
    assert merged["ratios"]["merged_vs_base_latency"] > 0
    assert "merged_vs_base_latency" in proc.stdout


def test_hot_paths_smoke(bench, tmp_path):
    hot = bench("hot_paths")
    path = tmp_path / "hot.json"
    result = hot.main(["--smoke", "--json", str(path)])
    _check(result, path, hot.REQUIRED)
    # one path alone: only its blocks run, only its ratios are reported
    alone = hot.main(["--smoke", "--paths", "adapter_add", "--json", str(path)])
    _check(alone, path, ["adapter_add_speedup", "adapter_add_view_speedup"])
    assert set(alone["ratios"]) == {"adapter_add_speedup", "adapter_add_view_speedup"}
    assert {k.split(" ")[0] for k in alone["times_s"]} == {"adapter_add", "adapter_add_view"}
    with pytest.raises(SystemExit):
        hot.main(["--smoke", "--paths", "adapter"])


def test_median_confidence_interval_by_order_statistics():
    """Hand-computed binomial coverages: n = 7 -> [x_(1), x_(7)], 1 - 2/2^7; n = 15 -> [x_(4), x_(12)],
    1 - 2 (1 + 15 + 105 + 455) / 2^15 (j = 5 would cover only 1 - 2 * 1941 / 2^15 = 0.88)."""
    from benchmarks import stats

    assert stats.median_ci([7, 1, 6, 2, 5, 3, 4]) == (1.0, 7.0, pytest.approx(1 - 2 / 128))
    assert stats.median_ci(list(range(15, 0, -1))) == (4.0, 12.0, pytest.approx(1 - 2 * 576 / 32768))
    low, high, coverage = stats.median_ci([1.0, 2.0, 3.0])  # too few for 95%: the range, with its real coverage
    assert (low, high, coverage) == (1.0, 3.0, pytest.approx(0.75))
    assert stats.ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == (2.0, 3.0, pytest.approx(0.75))
    with pytest.raises(ValueError):
        stats.ratio_ci([1.0], [])


def test_compare_means_welch_and_equivalence():
    """Welch's t by hand: a = 1..4, b = 2..6: d = -1.5, se^2 = (5/3)/4 + 2.5/5, Welch-Satterthwaite df; the p-value
    from the t distribution's survival function. TOST: equivalent exactly when the 90% CI lies inside the margin."""
    from scipy.stats import t as student_t

    from benchmarks import stats

    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0, 6.0]
    va, vb = (5 / 3) / 4, 2.5 / 5
    tstat = -1.5 / (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    got = stats.compare_means(a, b, margin=3.0)
    assert got["difference"] == pytest.approx(-1.5)
    assert got["p_difference"] == pytest.approx(2 * student_t.sf(abs(tstat), df))
    half = student_t.ppf(0.95, df) * (va + vb) ** 0.5
    assert got["ci"] == pytest.approx([-1.5 - half, -1.5 + half])
    assert not got["distinguishable"]
    for margin in (0.5, 1.5 + half - 1e-6, 1.5 + half + 1e-6, 5.0):
        c = stats.compare_means(a, b, margin=margin)
        assert c["equivalent"] == (-margin < c["ci"][0] and c["ci"][1] < margin), margin
    far = stats.compare_means([10.0, 10.5, 11.0], [1.0, 1.5, 2.0], margin=1.0)
    assert far["distinguishable"] and not far["equivalent"] and far["p_difference"] < 1e-3
    assert stats.compare_means([1.0], [1.0, 2.0], margin=1.0)["reason"]
    assert stats.compare_means([1.0, 1.0], [1.0, 1.0], margin=1.0)["p_difference"] is None
