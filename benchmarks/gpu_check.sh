#!/usr/bin/env bash
# One prepared GPU check: tests/test_gpu.py, then both train-step presets (roberta-base fp32 and
# bf16-mixed, llama3-8b-layers bf16; our KaSA and LoRA eager and compiled, PEFT LoRA and KaSA, KaSA through
# Lightning), then llama3-8b-layers on NF4 / int8 / bf16 bases (our KaSA and LoRA, PEFT QLoRA), written as ONE JSON. Sized to finish in under 5 minutes on one H200 (each part has its own timeout).
#
#   benchmarks/gpu_check.sh [PATH.json]          # default: $OUT/gpu_check.json, or ./gpu_check.json without $OUT
#   benchmarks/gpu_check.sh --cpu-smoke [PATH]   # the same steps on the CPU at tiny sizes (compile backend
#                                                # aot_eager): checks that the script runs, measures nothing
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then smoke=1; shift; fi
out="${1:-${OUT:-.}/gpu_check.json}"
mkdir -p "$(dirname "$out")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py="${PYTHON:-python}"

start=$(date +%s)
if (( smoke )); then
  tests_timeout=120; presets=(--preset all --smoke --device cpu --compile-backend aot_eager); presets_timeout=600
  quant=(--smoke --device cpu); quant_timeout=300
else
  tests_timeout=100; presets=(--preset all --quick --device cuda); presets_timeout=190
  quant=(--quant-size full --device cuda --repeats 3); quant_timeout=240
fi

echo "== tests/test_gpu.py (timeout ${tests_timeout}s)"
timeout "$tests_timeout" "$py" -m pytest -q tests/test_gpu.py -p no:cacheprovider --junitxml="$work/junit.xml" \
  2>&1 | tail -n 15
tests_rc=${PIPESTATUS[0]}

echo "== train-step presets (timeout ${presets_timeout}s)"
timeout "$presets_timeout" "$py" -m benchmarks.train_step "${presets[@]}" --json "$work/presets.json"
presets_rc=$?

echo "== quantised bases: nf4, int8, none (timeout ${quant_timeout}s)"
timeout "$quant_timeout" "$py" -m benchmarks.train_step --preset llama3-8b-layers --quant nf4,int8,none "${quant[@]}" \
  --json "$work/quant.json"
quant_rc=$?

"$py" - "$work" "$out" "$tests_rc" "$presets_rc" "$start" "$smoke" "$quant_rc" <<'PY'
import json, os, sys, time, xml.etree.ElementTree as ET
work, out, tests_rc, presets_rc, start, smoke, quant_rc = sys.argv[1:]
result = {"benchmark": "gpu_check", "smoke": smoke == "1", "wall_s": time.time() - int(start),
          "tests": {"returncode": int(tests_rc)}, "presets": None, "presets_returncode": int(presets_rc),
          "quant": None, "quant_returncode": int(quant_rc)}
junit = os.path.join(work, "junit.xml")
if os.path.exists(junit):
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    result["tests"].update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    result["tests"]["time_s"] = float(suite.get("time", 0))
    result["tests"]["cases"] = [
        {"name": c.get("name"), "time_s": float(c.get("time", 0)),
         "outcome": "failed" if c.find("failure") is not None or c.find("error") is not None
         else "skipped" if c.find("skipped") is not None else "passed"} for c in suite.iter("testcase")]
presets = os.path.join(work, "presets.json")
if os.path.exists(presets):
    with open(presets) as f:
        result["presets"] = json.load(f)
    result["machine"] = result["presets"].get("machine")
result["ratios"] = (result["presets"] or {}).get("ratios", {})
quant = os.path.join(work, "quant.json")
if os.path.exists(quant):
    with open(quant) as f:
        result["quant"] = json.load(f)
    result["ratios"].update(result["quant"].get("ratios", {}))
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(f"wrote {out}: tests rc {tests_rc}, presets rc {presets_rc}, quant rc {quant_rc}, {result['wall_s']:.0f} s")
PY
[[ "$tests_rc" == 0 && "$presets_rc" == 0 && "$quant_rc" == 0 ]]
