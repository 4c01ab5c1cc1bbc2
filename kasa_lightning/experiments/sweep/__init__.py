"""``python -m kasa_lightning sweep``: the paper's protocol as runs, seeds x methods (or the ablation) x configs.

    python -m kasa_lightning sweep --config configs/glue/roberta-base/rte.yaml [--config more.yaml ...]
        [--overlay configs/strategies/bf16-mixed.yaml ...] --seeds 0-4 --methods kasa,lora,pissa,milora
        --output_dir sweeps/rte [--ablation] [--test auto|yes|no] [--dry-run [--slurm_script FILE]]
        [--trainer.max_steps 6 --data.init_args.data_dir ../glue ...]   # any fit override, for every run
        [--eval_tasks arc_easy,piqa [--eval_include_path DIR] [--eval_limit N]]   # lm-eval after each fit

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
configs: the paper scores their last epoch; GLUE's "test" would be its validation split again), then, with
``--eval_tasks``, ``eval`` of ``last.ckpt`` on those lm-evaluation-harness tasks (``eval.json`` and the ``eval``
section of ``metrics.json``; ``kasa_lightning.harness``).

Resumable: a run whose ``status.json`` says done is skipped; any other run with a ``checkpoints/last.ckpt``
continues from it (``fit --ckpt_path``), and a finished fit is not repeated when only its test failed. A failed
run is recorded (``status.json``: the step, the exit code and the end of its log) and the sweep goes on; the exit
status is 1 when a run failed. A run that has started keeps its config: the same ``--output_dir`` with other
files, overlays or overrides is refused for it (results would mix). ``--dry-run`` writes the configs and prints one
shell command per run (``cd <working dir> && python -m kasa_lightning fit ... [&& ... test ...]``) for a cluster's
own scheduler (a SLURM array, GNU parallel, Ray); running the same sweep again later skips what they finished.
``--slurm_script FILE`` (a dry run) also writes them as a SLURM job array, task ``i`` running run ``i`` (``_slurm``).
There is no scheduler here: runs go one after the other; multi-device training is Lightning's
(``--trainer.devices``, ``--trainer.num_nodes``).

The seed sets ``seed_everything`` (initialisation, dropout); the data order and any held-out split follow the
DataModule's own ``seed`` (fixed), so every method and seed sees the same data.

The work is in four internal modules whose public names are re-exported here (this package is the entry point
``kasa_lightning.cli`` calls and the import path of every name): ``_spec`` (constants, ``SweepError``, ``Run``,
input parsing, JSON files), ``_protocol`` (the paper's protocol per task family), ``_plan`` (the cross product,
resolved configs, run directories, the manifest) and ``_exec`` (the run processes, resume, ``status.json``,
SIGTERM). This file keeps the command line.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from dataclasses import asdict  # re-exported: callers write run.json with sweep.asdict(run)
from pathlib import Path

from kasa_lightning.experiments.sweep import _lock as sweep_lock
from kasa_lightning.experiments.sweep._exec import execute, on_sigterm, run_state
from kasa_lightning.experiments.sweep._plan import plan, resolve, write_plan
from kasa_lightning.experiments.sweep._slurm import write_slurm_array
from kasa_lightning.experiments.sweep._spec import (
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
    unreadable_json,
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
    "unreadable_json",
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
        "--slurm_script",
        "--slurm-script",
        default=None,
        metavar="FILE",
        help="a dry run (implies --dry-run) that also writes FILE, a SLURM job-array script "
        "(#SBATCH --array=0-<runs-1>) whose task i runs run i's command; submit it with sbatch [--gres=gpu:1 ...] FILE",
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
        help="the metric to report (e.g. val/accuracy). Required for a DataModule the report does not know "
        "(without it such a config is refused); for a known one it is reported first, before the task's own",
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
    harness = parser.add_argument_group("lm-evaluation-harness after each fit (python -m kasa_lightning eval)")
    harness.add_argument("--eval_tasks", default=None, help="lm-eval tasks to score last.ckpt on, e.g. arc_easy,piqa")
    harness.add_argument("--eval_include_path", default=None, help="a folder of task YAML files")
    harness.add_argument("--eval_limit", type=float, default=None, help="documents per task (for checks)")
    harness.add_argument("--eval_num_fewshot", type=int, default=None, help="few-shot examples per prompt")
    harness.add_argument("--eval_batch_size", type=int, default=1, help="requests per forward pass")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.dry_run = args.dry_run or bool(args.slurm_script)  # the job array runs the dry run's commands
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
        from kasa_lightning.harness import EvalSetupError, eval_settings

        try:
            harness = eval_settings(
                args.eval_tasks, args.eval_include_path, args.eval_limit, args.eval_num_fewshot, args.eval_batch_size
            )
        except EvalSetupError as err:
            raise SweepError(str(err)) from None
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
            harness=harness,
        )
        with sweep_lock.plan_lock(root, argv):  # one sweep at a time writes configs into the folder
            registration, others = sweep_lock.join_output_dir(root, argv, register=not args.dry_run)
            if others:
                raise SweepError(
                    f"--output_dir {root}: another sweep is running there with other arguments "
                    f"({others[0].describe()}: sweep {shlex.join(others[0].argv)}); its runs would use configs "
                    "rewritten under it. Wait for it to finish, or use another --output_dir"
                )
            write_plan(runs, root, argv)
    except (SweepError, TimeoutError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        commands = [run.shell_command(root) for run, _ in runs]
        for command in commands:
            print(command)
        if args.slurm_script:
            script = write_slurm_array(Path(args.slurm_script), commands, root, argv)
            print(f"SLURM job array of {len(commands)} runs: {script}; submit with: sbatch {shlex.quote(str(script))}")
        return 0
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.signal(signal.SIGINT, on_sigterm)  # Ctrl-C: the same stop, no KeyboardInterrupt
    failed: list[str] = []
    busy: list[tuple[int, Run]] = []  # runs another sweep holds: done after the others, once it lets go
    try:
        for i, (run, _) in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run.rel_dir}: ", end="", flush=True)
            lock = run.directory(root) / ".lock"
            who = sweep_lock.acquire(lock, argv)
            if who is not None:
                busy.append((i, run))
                print(
                    f"in use by another sweep ({who.describe()}; lock {lock}); back to it after the others", flush=True
                )
                continue
            _execute_locked(run, root, lock, failed)
        for i, run in busy:
            lock = run.directory(root) / ".lock"
            print(f"[{i}/{len(runs)}] {run.rel_dir}: waiting for another sweep to release {lock} ...", flush=True)
            while sweep_lock.acquire(lock, argv) is not None:
                time.sleep(2.0)
            print(f"[{i}/{len(runs)}] {run.rel_dir}: ", end="", flush=True)
            _execute_locked(run, root, lock, failed)
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
        sweep_lock.release(registration)
    print(
        f"sweep: {len(runs) - len(failed)} of {len(runs)} runs done"
        + (f"; failed: {failed}" if failed else "")
        + f". Report: python -m kasa_lightning report {root}"
    )
    return 1 if failed else 0


def _execute_locked(run: Run, root: Path, lock: Path, failed: list[str]) -> None:
    """``execute`` the run whose ``lock`` this sweep holds, print its outcome, release the lock."""
    t0 = time.time()
    try:
        status = execute(run, root)
    finally:
        sweep_lock.release(lock)
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
