"""The benchmark scripts and their shared measurement helpers (how they measure: ``benchmarks/README.md``).

The 2-core project machines are shared and their speed drifts, so every script

* compares A and B in ONE process, interleaved (``interleave``: one block of each variant per repeat, the order
  rotated from repeat to repeat so that no variant always runs first or last), over several repeats, and
  reports medians and the median over repeats of the per-repeat ratio (``median_ratio``);
* records the torch thread count (``thread_info``) and an fp32 matmul throughput probe before and after
  (``Probe``), and flags the run as noisy when the probe moved by more than 20%;
* writes its JSON with the machine, the date and the command line (``write_json``), results under their own
  keys and the headline numbers in a top-level ``ratios`` object.

Absolute CPU times are indicative only; absolute times belong to a GPU run, with the device named.
The helpers live in small modules by job: ``machine`` (quiet output, threads, the throughput ``Probe``),
``timing`` (``interleave``, ``per_call``), ``stats`` (medians, ratios, intervals, tests), ``tables`` (markdown),
``results`` (``write_json``, ``check_ratios``) and ``cli`` (the shared options). Run a benchmark from the repository
root as ``python -m benchmarks.<name>``.
"""
