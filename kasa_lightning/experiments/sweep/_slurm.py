"""``sweep --dry-run --slurm_script FILE``: the sweep's runs as one SLURM job array.

Task ``i`` of the array (``SLURM_ARRAY_TASK_ID``) runs run ``i``'s dry-run command, the same line the dry run
prints: ``cd`` to the sweep's working directory, then ``fit`` (and ``validate``/``test`` where the sweep would run
them). The resources (GPUs, time, partition) are the cluster's business: add them as ``sbatch`` options
(``sbatch --gres=gpu:1 --time=4:00:00 FILE``) or edit the ``#SBATCH`` lines. At its time limit SLURM sends
SIGTERM (then SIGKILL after the cluster's ``KillWait``): the run saves its step and exits with status 143; the
same sweep command run again without ``--dry-run`` skips the finished runs and continues that one from its
``last.ckpt`` (an array task resubmitted as it is would start its run anew).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def slurm_array_script(commands: list[str], root: Path, argv: list[str]) -> str:
    """The text of a bash script for ``sbatch`` whose array task ``i`` runs ``commands[i]``."""
    if not commands:
        raise ValueError("a SLURM job array needs at least one run")
    logs = Path(root).resolve() / ".slurm"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={shlex.quote('kasa-sweep-' + Path(root).resolve().name)}",
        f"#SBATCH --array=0-{len(commands) - 1}",
        f"#SBATCH --output={logs}/%A_%a.out",
        f"# {len(commands)} runs of: python -m kasa_lightning sweep {shlex.join(argv)}",
        "# Task i runs run i (the dry run's line i). Add resources as sbatch options: sbatch --gres=gpu:1 <this file>",
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(str(logs))}",
        'case "${SLURM_ARRAY_TASK_ID:?run this file with sbatch, or set SLURM_ARRAY_TASK_ID}" in',
    ]
    lines += [f"  {i}) {command} ;;" for i, command in enumerate(commands)]
    lines += [
        '  *) echo "no run for SLURM_ARRAY_TASK_ID=${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        "",
    ]
    return "\n".join(lines)


def write_slurm_array(path: Path, commands: list[str], root: Path, argv: list[str]) -> Path:
    """Write ``slurm_array_script`` to ``path`` (executable) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(slurm_array_script(commands, root, argv))
    path.chmod(0o777 & ~_umask() | 0o100)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
