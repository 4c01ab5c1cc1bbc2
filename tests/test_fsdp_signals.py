"""SIGTERM under FSDP (Lightning's FSDP strategy on 2 CPU processes, ``lightning_helpers.CPUFSDPStrategy``), sent to
every process of the job as a scheduler sends it: the same guarantees as under DDP (``test_ddp_signals``). The
stop's checkpoint gathers the sharded adapters (a collective), so every rank must stop at the same batch."""

from __future__ import annotations

from test_ddp_signals import check_sigterm_to_every_process
from test_fsdp import FSDP, backbone  # noqa: F401  (the fixture: a tiny BERT saved like a pretrained model)


def test_sigterm_to_every_fsdp_process_saves_the_step_exits_143_and_resumes_exactly(tmp_path, backbone):  # noqa: F811
    check_sigterm_to_every_process(tmp_path, FSDP, backbone=backbone)
