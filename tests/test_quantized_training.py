"""Training on a quantised base through ``KaSAModule``: exact resume, ``load_from_checkpoint`` without a new SVD, the
precisions and gradient checkpointing, and ``torch.compile`` (aot_eager), on a tiny saved LLaMA in 4-bit NF4."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_helpers import RecordLosses, trainer

pytest.importorskip("bitsandbytes")

from quantized_lightning_helpers import instruct_data, save_tiny_causal, write_alpaca  # noqa: E402

from kasa_lightning import AdapterConfig, KaSAModule, adapted_layers, adapter_state_dict  # noqa: E402
from kasa_lightning.kasa import QuantizationConfig  # noqa: E402


class _Crashed(Exception):
    pass


class _Crash(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *_) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise _Crashed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):  # noqa: ANN001, ANN201
    return save_tiny_causal(tmp_path_factory.mktemp("tiny-causal"))


def _batches(n: int = 12, seed: int = 0) -> torch.utils.data.DataLoader:
    ids = torch.randint(3, 250, (n, 12), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader([{"input_ids": i, "labels": i} for i in ids], batch_size=2)


def _module(folder, mode: str = "fold", bits: int = 4, **kwargs) -> KaSAModule:  # noqa: ANN001, ANN003
    return KaSAModule(
        backbone=str(folder),
        task="causal_lm",
        adapter=AdapterConfig(r=4, dropout=0.1, target_modules=["q_proj", "v_proj"], truncation_mode=mode),
        quantization=QuantizationConfig(bits=bits),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        **kwargs,
    )


def _logits(module: KaSAModule) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(**next(iter(_batches(2, seed=1)))).logits


def test_resume_is_exact_and_reload_computes_no_svd(tmp_path, folder, monkeypatch) -> None:  # noqa: ANN001
    total, stop_at = 6, 3
    rows = write_alpaca(tmp_path / "alpaca.json", rows=10)  # 5 batches an epoch: the resume crosses an epoch

    def run(root, ckpt_path=None, crash_at=None):  # noqa: ANN001, ANN202
        L.seed_everything(0)
        rec = RecordLosses()
        callbacks = [rec, ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)]
        callbacks += [_Crash(crash_at)] if crash_at else []
        module = _module(folder)
        data = instruct_data(str(folder), rows, batch_size=2, max_length=48)  # resumable mid-epoch
        trainer(root, max_steps=total, callbacks=callbacks).fit(module, data, ckpt_path=ckpt_path)
        return module, rec.losses

    full, full_losses = run(tmp_path / "a")
    with pytest.raises(_Crashed):
        run(tmp_path / "b", crash_at=stop_at)
    resumed, resumed_losses = run(tmp_path / "b", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert len(resumed_losses) == total - stop_at
    assert resumed_losses == pytest.approx(full_losses[stop_at:], abs=1e-6)
    a, b = adapter_state_dict(full.model), adapter_state_dict(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)

    # adapter-only, plus the removed part the rebuild needs (the base is re-quantised from W - D at load)
    saved = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(saved) == {f"model.{k}" for k in a}
    assert {k.rsplit(".", 1)[-1] for k in saved} == {"delta_u", "delta_v", "delta_sigma", "dropped_u", "dropped_v"}

    from kasa_lightning.kasa import inject

    def no_svd(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("load_from_checkpoint computed an SVD")

    monkeypatch.setattr(inject, "extreme_triplets", no_svd)
    reloaded = KaSAModule.load_from_checkpoint(tmp_path / "a" / "last.ckpt")
    layers = list(adapted_layers(reloaded.model))
    assert all(type(layer.base_layer).__name__ == "Linear4bit" for _, layer in layers)
    torch.testing.assert_close(_logits(reloaded), _logits(full), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("precision", "mode", "extra"),
    [
        ("bf16-mixed", "fold", {}),
        ("bf16-true", "lowrank", {}),
        ("32-true", "fold", {"gradient_checkpointing": True}),
    ],
)
def test_precisions_checkpointing_and_compile(tmp_path, folder, precision: str, mode: str, extra) -> None:  # noqa: ANN001
    L.seed_everything(0)
    module = _module(folder, mode=mode, **extra)
    rec = RecordLosses()
    trainer(tmp_path, max_steps=8, precision=precision, callbacks=[rec]).fit(module, _batches(4))
    assert all(torch.isfinite(torch.tensor(rec.losses)))
    assert sum(rec.losses[-2:]) < sum(rec.losses[:2]), rec.losses  # the same 2 batches, epoch after epoch
    for _, layer in adapted_layers(module.model):
        assert type(layer.base_layer).__name__ == "Linear4bit" and layer.base_layer.weight.dtype == torch.uint8
        assert layer.delta_u.dtype == torch.float32
        if layer.dropped_u is not None:
            # fold: bf16, what the base was quantised from, not cast again; lowrank: float32 as the adapters
            assert layer.dropped_u.dtype == (torch.bfloat16 if mode == "fold" else torch.float32)


def test_compile_gives_the_eager_losses(tmp_path, folder) -> None:  # noqa: ANN001
    """``model.compile`` (aot_eager, as ``tests/test_compile.py``) over a 4-bit base gives the eager losses."""
    losses = {}
    for name, extra in (("eager", {}), ("compiled", {"compile": {"backend": "aot_eager"}})):
        L.seed_everything(0)
        module = _module(folder, mode="lowrank", **extra)
        rec = RecordLosses()
        trainer(tmp_path / name, max_steps=2, callbacks=[rec]).fit(module, _batches(4))
        losses[name] = rec.losses
    assert losses["compiled"] == pytest.approx(losses["eager"], abs=1e-5)
