"""Continuing a stopped run trains every batch once, ``fit --ckpt_path`` keeps the
user's settings (refusing structural differences), and loading our adapter-only checkpoints is quiet but still
refuses a broken one."""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_helpers import MINILM, TINY_BERT, StopAfter, ready, tiny_data, tiny_module, trainer

from kasa_lightning import AdapterConfig, KaSAModule, adapter_state_dict
from kasa_lightning.cli import main


class RecordBatches(L.Callback):
    """The token ids of every training batch, in order (which samples were trained, and when)."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches.append(batch["input_ids"].tolist())


def _constant(optimizer):  # noqa: ANN001, ANN202
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _run(root, ckpt_path=None, batch_size=8, **trainer_kwargs):  # noqa: ANN001, ANN003
    """A tiny fit with the quickstart's checkpoint callback (monitor + save_last); 40 samples: 5 batches of 8.
    The learning rate is constant: the built-in schedule is laid out over max_steps, which the runs change."""
    L.seed_everything(0)
    rec = RecordBatches()
    ckpt = ModelCheckpoint(dirpath=root, monitor="val/accuracy", mode="max", save_last=True)
    t = trainer(root, callbacks=[rec, ckpt], **trainer_kwargs)
    module = tiny_module(adapter=AdapterConfig(r=4, dropout=0.1), lr_scheduler=_constant)
    t.fit(module, tiny_data(batch_size=batch_size), ckpt_path=ckpt_path)
    return module, rec.batches


def _adapters(module: KaSAModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter_state_dict(module.model).items()}


def test_continuing_a_run_stopped_at_max_steps_trains_every_batch_once(tmp_path):
    """Old code: the max_steps=3 checkpoint said epoch 1 with 3 batches done; the resumed run trained 2 batches
    of epoch 1 and epoch 2 (7 steps, ending at step 10 instead of 15) and never the last 2 batches of epoch 0."""
    full, full_batches = _run(tmp_path / "full", max_epochs=3)
    assert len(full_batches) == 15

    _, first = _run(tmp_path / "cut", max_epochs=3, max_steps=3)
    saved = torch.load(tmp_path / "cut/last.ckpt", weights_only=False)
    assert saved["global_step"] == 3
    assert saved["epoch"] == 0  # still in epoch 0, not "epoch 1 with 3 batches done"
    assert saved["SentimentDemoDataModule"]["epoch"] == 0 and saved["SentimentDemoDataModule"]["batches"] == 3

    resumed, rest = _run(tmp_path / "cut", ckpt_path=tmp_path / "cut/last.ckpt", max_epochs=3)
    assert len(first) + len(rest) == 15
    assert first + rest == full_batches  # the same samples in the same order as the uninterrupted run
    final = torch.load(tmp_path / "cut/last.ckpt", weights_only=False)
    assert final["global_step"] == 15
    a, b = _adapters(full), _adapters(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_last_ckpt_holds_the_final_step(tmp_path):
    """Old code: with a monitor, Lightning 2.6 wrote last.ckpt only with a new best, so stopping at max_steps 7
    (mid-epoch 1, no validation since epoch 0) left last.ckpt at step 5."""
    _run(tmp_path, max_epochs=3, max_steps=7)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 7
    assert saved["epoch"] == 1 and saved["SentimentDemoDataModule"]["batches"] == 2


def test_resuming_mid_epoch_with_another_batch_size_is_refused(tmp_path):
    """Old code: the resume skipped 3 x 4 = 12 samples of epoch 0 where 3 x 8 = 24 had been trained, silently."""
    _run(tmp_path / "mid", max_steps=3)
    with pytest.raises(ValueError, match=r"data\.batch_size=4.*3 batches of 8 samples.*data\.batch_size=8"):
        _run(tmp_path / "mid", ckpt_path=tmp_path / "mid/last.ckpt", batch_size=4, max_epochs=2)

    # at an epoch end nothing is skipped, so the batch size may change: epoch 1 trains all 40 samples in 4s
    _, first = _run(tmp_path / "end", max_steps=5)
    _, rest = _run(tmp_path / "end", ckpt_path=tmp_path / "end/last.ckpt", batch_size=4, max_epochs=2)
    assert len(first) == 5 and len(rest) == 10 and all(len(b) == 4 for b in rest)

    def samples(batches):  # noqa: ANN001, ANN202  (rows without their padding, which depends on the batch)
        return sorted(tuple(t for t in row if t != 0) for batch in batches for row in batch)

    assert samples(rest) == samples(first)  # every sample once


def _fit(root: Path, *extra: str):  # noqa: ANN202
    """The CLI on a tiny from-config BERT (the quickstart's model section, smaller), in this process."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
            ],
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {
                "backbone": MINILM,
                "backbone_config": TINY_BERT,
                "adapter": {"r": 8, "beta": 1.0e-4, "gamma": 1.0e-3},
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-3}},
            },
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.SentimentDemoDataModule",
            "init_args": {"train_size": 32, "val_size": 8, "batch_size": 8, "max_length": 32},
        },
    }
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["fit", "--config", str(path), *extra])


def test_fit_ckpt_path_keeps_the_users_settings(tmp_path, monkeypatch):
    """Old code: LightningCLI replaced the config's model settings by the checkpoint's: an r=4 checkpoint under
    an r=8 config trained r=4, --model.adapter.beta 0.5 was ignored, and config.yaml said r=4, beta 1e-4."""
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path / "a", "--model.adapter.r", "4", "--trainer.max_steps", "1")
    ckpt = tmp_path / "a/lightning_logs/version_0/checkpoints/last.ckpt"

    # a structural difference (the config says r=8) is refused, naming the setting, both values and the fix
    with pytest.raises(ValueError, match=r"model\.adapter\.r: checkpoint 4, yours 8[\s\S]*--model\.adapter\.r 4"):
        _fit(tmp_path / "b", "--ckpt_path", str(ckpt))

    # other settings are the user's, with a warning each
    with pytest.warns(UserWarning) as record:
        cli = _fit(
            tmp_path / "c",
            "--model.adapter.r",
            "4",
            "--model.adapter.beta",
            "0.5",
            "--model.init_args.optimizer.init_args.lr",
            "0.005",
            "--trainer.max_steps",
            "2",
            "--ckpt_path",
            str(ckpt),
        )
    messages = [str(w.message) for w in record]
    assert any("model.adapter.beta=0.5; the checkpoint was trained with 0.0001" in m for m in messages), messages
    assert any("optimizer lr=0.005" in m and "had 0.001" in m for m in messages), messages
    assert any("trainer.max_steps=2; the checkpoint's run had 1" in m for m in messages), messages
    assert cli.model.adapter_config.beta == 0.5 and cli.model.adapter_config.r == 4
    assert cli.trainer.global_step == 2
    for group in cli.trainer.optimizers[0].param_groups:
        assert group["initial_lr"] == 0.005
    assert cli.trainer.lr_scheduler_configs[0].scheduler.base_lrs == [0.005, 0.005]
    saved = yaml.safe_load((tmp_path / "c/lightning_logs/version_0/config.yaml").read_text())
    adapter = saved["model"]["init_args"]["adapter"]
    assert adapter["r"] == 4 and adapter["beta"] == 0.5
    assert saved["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.005


def test_loading_adapter_checkpoints_is_quiet_and_a_missing_tensor_is_refused(tmp_path, recwarn, monkeypatch):
    """Old code: every load_from_checkpoint warned 'The state dict ... contains no parameters' and listed every
    frozen base weight under 'Found keys that are in the model state dict but not in the checkpoint'."""

    def fit(root, stop=None, ckpt_path=None):  # noqa: ANN001, ANN202
        L.seed_everything(0)
        module = KaSAModule(backbone=MINILM, adapter=AdapterConfig(r=2))  # the real MiniLM: adapter-only files
        callbacks = [ModelCheckpoint(dirpath=root, save_last=True)] + ([StopAfter(stop)] if stop else [])
        t = trainer(root, max_steps=2, limit_val_batches=0, callbacks=callbacks)
        t.fit(module, tiny_data(), ckpt_path=ckpt_path)
        return module

    straight = fit(tmp_path / "a")
    fit(tmp_path / "b", stop=1)
    resumed = fit(tmp_path / "b", ckpt_path=tmp_path / "b/last.ckpt")
    import kasa_lightning.kasa.inject as inject

    svds = []
    real_svd = inject.extreme_triplets
    monkeypatch.setattr(inject, "extreme_triplets", lambda *a, **k: svds.append(1) or real_svd(*a, **k))
    loaded = KaSAModule.load_from_checkpoint(tmp_path / "b/last.ckpt")
    assert svds == []  # built for the checkpoint's tensors: no SVD (README), which the old code computed
    monkeypatch.undo()
    batch = next(iter(ready(tiny_data()).val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, straight.eval()(**batch).logits, atol=1e-5, rtol=0)
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "contains no parameters" in m or "Found keys that are" in m], messages
    # the quiet load did load: the resumed run equals the straight one, and the reloaded module equals both
    for k, v in _adapters(straight).items():
        torch.testing.assert_close(_adapters(resumed)[k], v, atol=1e-6, rtol=0, msg=k)
        torch.testing.assert_close(_adapters(loaded)[k], v, atol=1e-6, rtol=0, msg=k)

    checkpoint = torch.load(tmp_path / "b/last.ckpt", weights_only=False)
    assert len(checkpoint["state_dict"]) == len(adapter_state_dict(straight.model))  # adapters and head only
    key = next(k for k in checkpoint["state_dict"] if k.endswith("delta_sigma"))
    del checkpoint["state_dict"][key]
    torch.save(checkpoint, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match=r"missing \['" + key.removeprefix("model.").replace(".", r"\.")):
        KaSAModule.load_from_checkpoint(tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="missing"):
        fit(tmp_path / "c", ckpt_path=tmp_path / "broken.ckpt")


def test_a_checkpoint_with_per_tensor_optimiser_state_resumes_exactly_on_stacked_adapters(tmp_path, monkeypatch):
    """Checkpoints written with one parameter per adapter tensor (before stacking, or by a sharding strategy) hold
    the AdamW moments of every dU, dV, dsigma: resuming them on stacked adapters gives the uninterrupted run."""
    import kasa_lightning.training.module as module_file

    full, _ = _run(tmp_path / "full", max_steps=4)
    stacking = module_file.apply_adapters
    monkeypatch.setattr(module_file, "apply_adapters", lambda *a, **k: stacking(*a, **{**k, "stacked": False}))
    _run(tmp_path / "cut", max_steps=2)
    saved = torch.load(tmp_path / "cut/last.ckpt", weights_only=False)
    assert len(saved["optimizer_states"][0]["param_groups"][0]["params"]) == 3 * 2 * 2  # per tensor
    monkeypatch.setattr(module_file, "apply_adapters", stacking)
    resumed, _ = _run(tmp_path / "cut", ckpt_path=tmp_path / "cut/last.ckpt", max_steps=4)
    assert len(resumed.trainer.optimizers[0].param_groups[0]["params"]) == 2  # stacked
    ours, want = _adapters(resumed), _adapters(full)
    assert ours.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(ours[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


def test_per_tensor_optimiser_state_that_cannot_be_stacked_is_refused():
    from conftest import make_tiny_bert

    from kasa_lightning import adapted_layers, apply_adapters
    from kasa_lightning.training._optimizer_layout import stack_optimizer_state

    own = apply_adapters(make_tiny_bert(), AdapterConfig(r=4, target_modules=["query"]), stacked=False)
    stacked = apply_adapters(make_tiny_bert(), AdapterConfig(r=4, target_modules=["query"]))
    params = [p for p in own.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = torch.optim.AdamW(params)
    opt.step()
    layers = list(adapted_layers(stacked))
    state = opt.state_dict()
    assert stack_optimizer_state(state, layers, stacked.adapter_bank)
    assert [tuple(s["exp_avg"].shape) for s in state["state"].values()] == [(4, 32, 4), (2, 4)]
    assert not stack_optimizer_state(state, layers, stacked.adapter_bank)  # stacked already: left alone
    partial = opt.state_dict()
    del partial["state"][0]  # the first dU has no state
    with pytest.raises(ValueError, match="covers only some adapter tensors"):
        stack_optimizer_state(partial, layers, stacked.adapter_bank)
    steps = opt.state_dict()
    steps["state"][1]["step"] = torch.tensor(7.0)
    with pytest.raises(ValueError, match="'step' differs"):
        stack_optimizer_state(steps, layers, stacked.adapter_bank)
