"""``merge_files.write_merged_from_checkpoint``: the original full-precision checkpoint with W - D + update written
for a model trained on a quantised base, checked against the same adapters merged into the full-precision model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")

from quantized_helpers import load_full, load_quantized, logits, save_tiny_llama, train  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from kasa_lightning.kasa import (  # noqa: E402
    AdapterConfig,
    adapter_state_dict,
    apply_adapters,
    load_adapter_state_dict,
    merge_and_unload,
)
from kasa_lightning.kasa.merge_files import write_merged_from_checkpoint  # noqa: E402


def test_merged_files_equal_the_full_precision_merge_and_copy_the_rest(tmp_path) -> None:  # noqa: ANN001
    folder = save_tiny_llama(tmp_path / "base")
    cfg = AdapterConfig(method="kasa", r=4, target_modules=["q_proj", "v_proj"])
    quantized = apply_adapters(load_quantized(folder, 4), cfg)
    train(quantized, steps=3)  # adapters away from their initial values
    out = write_merged_from_checkpoint(quantized, tmp_path / "merged")

    # the reference: the same adapters on the full-precision model (truncated from the same weights), merged
    full = apply_adapters(load_full(folder), cfg)
    load_adapter_state_dict(full, adapter_state_dict(quantized))
    reference = merge_and_unload(full)

    written, original = load_file(str(out / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    assert written.keys() == original.keys()
    targets = {k for k in written if k.endswith(("q_proj.weight", "v_proj.weight"))}
    assert targets
    state = reference.state_dict()
    for key in targets:
        assert not torch.equal(written[key], original[key])  # the update and the removed part are in
        torch.testing.assert_close(written[key].float(), state[key].float(), atol=1e-5, rtol=0)
    for key in written.keys() - targets:
        assert torch.equal(written[key], original[key]), key  # every other tensor bit for bit
    torch.testing.assert_close(logits(load_full(out)), logits(reference), atol=1e-4, rtol=0)
