"""``python -m kasa_lightning sweep``: the paper's protocol as runs, seeds x methods (or the ablation) x configs.

    python -m kasa_lightning sweep --config configs/glue/roberta-base/rte.yaml [--config more.yaml ...]
        [--overlay configs/strategies/bf16-mixed.yaml ...] --seeds 0-4 --methods kasa,lora,pissa,milora
        --output_dir sweeps/rte [--ablation] [--test auto|yes|no] [--dry-run]
        [--trainer.max_steps 6 --data.init_args.data_dir ../glue ...]   # any fit override, for every run

Each run gets ``<output_dir>/<task>/<method>/seed<k>/`` with

* ``resolved.yaml``: the resolved config (task config, ``--overlay`` files, the method's overlay from
  ``configs/methods/`` or ``configs/ablation/``, the overrides, then ``seed_everything: k``,
  ``trainer.default_root_dir`` = the run directory, the ModelCheckpoint writing ``checkpoints/last.ckpt`` there,
  ``metrics_file.path`` = ``metrics.json`` there, no progress bar unless asked for);
* ``run.json``: what the report needs (task, method, seed, model, task family, the metrics and the protocol);
* ``metrics.json`` (written by the run, ``kasa_lightning.callbacks.MetricsFile``), ``status.json`` (done /
  failed with the error / running) and the logs ``fit.log``, ``validate.log``, ``test.log``.

``<task>`` is the config's path under ``configs/`` with ``/`` as ``-`` (``glue-roberta-base-rte``), or the file's
stem for a config elsewhere. Every run is ``python -m kasa_lightning fit --config <run>/resolved.yaml`` in its own
process, then ``validate`` of ``last.ckpt`` when the training stopped after its last validation (``max_steps``
mid-epoch), then ``test`` of ``last.ckpt`` where the config has a test set (E2E, commonsense and instruction
configs: the paper scores their last epoch; GLUE's "test" would be its validation split again).

Resumable: a run whose ``status.json`` says done is skipped; any other run with a ``checkpoints/last.ckpt``
continues from it (``fit --ckpt_path``), and a finished fit is not repeated when only its test failed. A failed
run is recorded (``status.json``: the step, the exit code and the end of its log) and the sweep goes on; the exit
status is 1 when a run failed. A run that has started keeps its config: the same ``--output_dir`` with other
files, overlays or overrides is refused for it (results would mix). ``--dry-run`` writes the configs and prints one
shell command per run (``cd <working dir> && python -m kasa_lightning fit ... [&& ... test ...]``) for a cluster's
own scheduler (a SLURM array, GNU parallel, Ray); running the same sweep again later skips what they finished.
There is no scheduler here: runs go one after the other; multi-device training is Lightning's
(``--trainer.devices``, ``--trainer.num_nodes``).

The seed sets ``seed_everything`` (initialisation, dropout); the data order and any held-out split follow the
DataModule's own ``seed`` (fixed), so every method and seed sees the same data.

The work is in four modules, re-exported here (this module is the entry point ``kasa_lightning.cli`` calls and the
import path of every name): ``sweep_spec`` (constants, ``SweepError``, ``Run``, input parsing, JSON files),
``sweep_protocol`` (the paper's protocol per task family), ``sweep_plan`` (the cross product, resolved configs,
run directories, the manifest) and ``sweep_exec`` (the run processes, resume, ``status.json``, SIGTERM). This file
keeps the command line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import asdict  # re-exported: callers write run.json with sweep.asdict(run)
from pathlib import Path

# the private helpers stay reachable where they were (kasa_lightning.sweep._family, ...)
from kasa_lightning.sweep_exec import _Child, _log_tail, _on_sigterm, execute, run_state  # noqa: F401
from kasa_lightning.sweep_plan import (  # noqa: F401
    _MISSING,
    _finish_config,
    _flat,
    _parse_only_cli,
    plan,
    resolve,
    write_plan,
)
from kasa_lightning.sweep_protocol import _family  # noqa: F401
from kasa_lightning.sweep_spec import (
    ABLATION,
    FORMAT,
    MANIFEST,
    METHODS,
    PASS_THROUGH,
    RESOLVED,
    Run,
    SweepError,
    default_configs_dir,
    parse_methods,
    parse_seeds,
    read_json,
    task_name,
    write_json,
)

__all__ = [
    "ABLATION",
    "FORMAT",
    "MANIFEST",
    "METHODS",
    "PASS_THROUGH",
    "RESOLVED",
    "Run",
    "SweepError",
    "asdict",
    "build_parser",
    "default_configs_dir",
    "execute",
    "main",
    "parse_methods",
    "parse_seeds",
    "plan",
    "read_json",
    "resolve",
    "run_state",
    "task_name",
    "write_json",
    "write_plan",
]


# ---------------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kasa_lightning sweep",
        description=__doc__.split("\n\n")[0],
        epilog="Any --trainer.*, --model.*, --data.* override is passed to every run (e.g. --trainer.max_steps 6).",
    )
    parser.add_argument("--config", action="append", required=True, help="a task config; repeat for several tasks")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        help="a config applied to every run (e.g. configs/strategies/bf16-mixed.yaml); repeatable",
    )
    parser.add_argument("--seeds", default="0", help="seeds: 0-4, 0,2,5 or 0-2,7 (default 0)")
    parser.add_argument("--methods", default=None, help=f"comma-separated, of {','.join(METHODS)} (default kasa)")
    parser.add_argument(
        "--ablation", action="store_true", help=f"the five ablation steps ({', '.join(ABLATION)}) instead of --methods"
    )
    parser.add_argument("--output_dir", "--output-dir", required=True, help="the sweep's root directory")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="write the configs and print one shell command per run; run nothing",
    )
    parser.add_argument(
        "--test",
        default="auto",
        choices=("auto", "yes", "no"),
        help="test last.ckpt after fit: auto = where the config has a test set (E2E, commonsense, instruction)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="the metric to report for a DataModule the report does not "
        "know (e.g. val/accuracy); it is reported first otherwise",
    )
    parser.add_argument(
        "--method_overlay",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="another method for --methods: its name and the overlay that makes it; repeatable",
    )
    parser.add_argument(
        "--configs_dir",
        default=None,
        help="the folder with methods/ and ablation/ (default: the repository's configs/)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    stray = [a for a in unknown if a.startswith("-") and not a.startswith(PASS_THROUGH)]
    if stray or (unknown and not unknown[0].startswith(PASS_THROUGH)):
        parser.error(
            f"unrecognized arguments {stray or unknown[:1]}: sweep passes only --trainer.*, --model.*, "
            "--data.* overrides on to the runs"
        )
    try:
        if args.ablation and args.methods:
            raise SweepError("--ablation and --methods exclude each other: the ablation runs its five steps")
        seeds = parse_seeds(args.seeds)
        extra = {}
        for item in args.method_overlay:
            name, sep, path = item.partition("=")
            if not sep or not name or not path or name in METHODS:
                raise SweepError(f"--method_overlay {item}: write NAME=FILE with a new name (not one of {METHODS})")
            extra[name] = path
        methods = None if args.ablation else parse_methods(args.methods or "kasa", tuple(extra))
        root = Path(args.output_dir)
        runs = plan(
            args.config,
            seeds,
            methods,
            root,
            args.overlay,
            unknown,
            ablation=args.ablation,
            configs_dir=args.configs_dir,
            metric=args.metric,
            test=args.test,
            method_overlays=extra,
        )
        write_plan(runs, root, argv)
    except SweepError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run, _ in runs:
            print(run.shell_command(root))
        return 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.signal(signal.SIGINT, _on_sigterm)  # Ctrl-C: the same stop, no KeyboardInterrupt
    failed = []
    try:
        for i, (run, _) in enumerate(runs, 1):
            t0 = time.time()
            print(f"[{i}/{len(runs)}] {run.rel_dir}: ", end="", flush=True)
            status = execute(run, root)
            if status.get("skipped"):
                print("done earlier, skipped", flush=True)
            elif status["status"] == "done":
                print(f"done ({time.time() - t0:.0f} s)", flush=True)
            else:
                failed.append(run.rel_dir)
                print(
                    f"FAILED in {status['step']}: {status['error'].splitlines()[-1] if status['error'] else ''} "
                    f"(see {run.directory(root) / 'status.json'})",
                    flush=True,
                )
    except SystemExit as stop:
        if stop.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            print(
                "\nsweep: interrupted; the current run is marked interrupted and keeps its last.ckpt. Rerun the "
                "same sweep command to resume it.",
                file=sys.stderr,
                flush=True,
            )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    print(
        f"sweep: {len(runs) - len(failed)} of {len(runs)} runs done"
        + (f"; failed: {failed}" if failed else "")
        + f". Report: python -m kasa_lightning report {root}"
    )
    return 1 if failed else 0
