"""KaSAModule: training, logging, optimiser groups, checkpoints, exact resume, subclassing, bad input."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_helpers import (
    MINILM,
    TINY_BERT,
    RecordLosses,
    ready,
    tiny_data,
    tiny_module,
    trainer,
)

from kasa_lightning import (
    AdapterConfig,
    KaSAModule,
    NonFiniteLossError,
    adapted_layers,
    adapter_state_dict,
)


def _adapters(module):
    return {k: v.clone() for k, v in adapter_state_dict(module.model).items()}


def test_fit_logs_losses_and_metric(tmp_path):
    L.seed_everything(0)
    module, data = tiny_module(), tiny_data()
    logged = {}

    class Grab(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    t = trainer(tmp_path, max_epochs=1, callbacks=[Grab()], log_every_n_steps=1)
    t.fit(module, data)
    for key in ("train/loss", "train/task_loss", "train/l2", "train/l3", "train/reg_loss", "train/lr"):
        assert key in logged, key
    reg = module.regularizer()
    assert logged["train/loss"] == pytest.approx(logged["train/task_loss"] + logged["train/reg_loss"], rel=1e-5)
    assert 0.0 <= float(t.callback_metrics["val/accuracy"]) <= 1.0
    # the optimiser holds the trainable parameters only: adapters + head, in two groups
    opt = t.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    # the adapters stacked: one (8, 32, r) group of the 2 layers x (query, value) factors, one (4, r) of the singular
    # values; then the head's weight and bias
    assert in_opt == trainable and len(in_opt) == 2 + 2
    assert [tuple(p.shape) for p in opt.param_groups[0]["params"]] == [(8, 32, 8), (4, 8)]  # r = 8
    assert reg.l2.item() > 0


def test_head_lr_and_default_warmup_schedule(tmp_path):
    module = tiny_module(head_lr=0.5, warmup_ratio=0.25, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    t = trainer(tmp_path, max_steps=8)
    t.fit(module, tiny_data())
    groups = {g["name"]: g for g in t.optimizers[0].param_groups}
    assert groups["adapters"]["initial_lr"] == 0.1 and groups["modules_to_save"]["initial_lr"] == 0.5
    assert t.lr_scheduler_configs[0].interval == "step"
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # linear decay reached 0 at the last step


def test_checkpoint_holds_adapters_only_and_reloads(tmp_path):
    L.seed_everything(0)
    module = tiny_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = trainer(tmp_path, max_steps=4, callbacks=[ckpt])
    t.fit(module, tiny_data())
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    # a from-config (random) backbone cannot be rebuilt from anywhere, so its checkpoint keeps every weight
    assert set(state["state_dict"]) == {f"model.{k}" for k in module.model.state_dict()}
    reloaded = KaSAModule.load_from_checkpoint(tmp_path / "last.ckpt")
    batch = next(iter(ready(tiny_data()).val_dataloader()))
    module.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, module(**batch).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="model.adapter.r: checkpoint 8, yours 4"):
        KaSAModule.load_from_checkpoint(tmp_path / "last.ckpt", adapter=AdapterConfig(r=4))
    with pytest.raises(ValueError, match="model.backbone: checkpoint .*, yours 'some-org/other-model'"):
        KaSAModule.load_from_checkpoint(tmp_path / "last.ckpt", backbone="some-org/other-model")


def test_minilm_checkpoint_is_under_five_percent_of_the_base(tmp_path):
    import os

    from kasa_lightning.hub import resolve_pretrained

    L.seed_everything(0)
    module = KaSAModule(backbone=MINILM)
    t = trainer(
        tmp_path, max_steps=1, limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    )
    t.fit(module, tiny_data(train_size=8))
    base = os.path.getsize(os.path.join(resolve_pretrained(MINILM), "model.safetensors"))
    size = os.path.getsize(tmp_path / "last.ckpt")
    assert size < 0.05 * base, (size, base)
    keys = set(torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"])
    assert keys == {f"model.{k}" for k in adapter_state_dict(module.model)}  # adapters + truncation + head only
    reloaded = KaSAModule.load_from_checkpoint(tmp_path / "last.ckpt")
    batch = next(iter(ready(tiny_data()).val_dataloader()))
    module.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, module(**batch).logits, atol=1e-5, rtol=1e-5)


class _Crashed(Exception):
    pass


class _Crash(L.Callback):
    """Simulates a crash right before training step ``step + 1`` (after step ``step``'s checkpoint is written)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step >= self.step:
            raise _Crashed


@pytest.mark.parametrize("stop_at", [3, 5])  # mid-epoch and at the epoch boundary (5 batches per epoch)
def test_resume_is_exact(tmp_path, stop_at):
    total = 8

    def run(root, ckpt_path=None, crash_at=None):
        L.seed_everything(0)
        rec = RecordLosses()
        callbacks = [rec, ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)]
        callbacks += [_Crash(crash_at)] if crash_at else []
        t = trainer(root, max_steps=total, callbacks=callbacks)
        module = tiny_module(adapter=AdapterConfig(r=4, dropout=0.1))
        t.fit(module, tiny_data(), ckpt_path=ckpt_path)
        return module, rec.losses

    full, full_losses = run(tmp_path / "a")
    with pytest.raises(_Crashed):
        run(tmp_path / "b", crash_at=stop_at)
    resumed, resumed_losses = run(tmp_path / "b", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert len(full_losses) == total and len(resumed_losses) == total - stop_at
    assert resumed_losses == pytest.approx(full_losses[stop_at:], abs=1e-6)
    a, b = _adapters(full), _adapters(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_subclass_changes_the_loss(tmp_path):
    class Smoothed(KaSAModule):
        def task_loss(self, batch, outputs):
            return torch.nn.functional.cross_entropy(outputs.logits, batch["labels"], label_smoothing=0.2)

    L.seed_everything(0)
    module = Smoothed(backbone=MINILM, backbone_config=TINY_BERT)
    module.configure_model()
    batch = next(iter(ready(tiny_data()).train_dataloader()))
    module.eval()
    with torch.no_grad():
        out = module.model(**batch)
        expected = torch.nn.functional.cross_entropy(out.logits, batch["labels"], label_smoothing=0.2)
        got = module.task_loss(batch, module.model(**batch))
    torch.testing.assert_close(got, expected)
    assert not torch.isclose(got, out.loss)


def test_non_finite_loss_stops_without_overwriting_the_good_checkpoint(tmp_path):
    class Exploding(KaSAModule):
        def task_loss(self, batch, outputs):
            loss = super().task_loss(batch, outputs)
            return loss * float("nan") if self.global_step >= 2 else loss

    L.seed_everything(0)
    module = Exploding(backbone=MINILM, backbone_config=TINY_BERT)
    t = trainer(
        tmp_path, max_steps=6, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)]
    )
    with pytest.raises(NonFiniteLossError, match="global step 2.*learning rate"):
        t.fit(module, tiny_data())
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    L.seed_everything(0)
    module = tiny_module()
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, tiny_data())
    path = tmp_path / "last.ckpt"
    t.save_checkpoint(path)
    good = path.read_bytes()

    from kasa_lightning.kasa import atomic

    def broken_fsync(fd):  # the bytes are in the temporary file, then the disk reports it full
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        t.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".tmp", ".ckpt")) == ["last.ckpt"]
    KaSAModule.load_from_checkpoint(path)


def test_bf16_mixed_and_bf16_true_keep_adapters_training(tmp_path):
    for precision in ("bf16-mixed", "bf16-true"):
        L.seed_everything(0)
        module = tiny_module()
        t = trainer(tmp_path, max_steps=3, precision=precision, limit_val_batches=0)
        module.configure_model()
        before = _adapters(module)
        t.fit(module, tiny_data())
        for _, layer in adapted_layers(module.model):
            for p in layer.adapter_parameters():
                assert p.dtype == torch.float32, precision
        after = _adapters(module)
        assert not torch.equal(
            before[next(k for k in before if k.endswith("delta_u"))],
            after[next(k for k in after if k.endswith("delta_u"))],
        ), precision
        if precision == "bf16-true":
            assert module.model.bert.encoder.layer[0].attention.self.query.base_layer.weight.dtype == torch.bfloat16


def test_gradient_checkpointing_and_accumulation_match_plain_training(tmp_path):
    def run(batch_size=8, gc=False, **kwargs):
        L.seed_everything(0)
        module = tiny_module(
            backbone_config={**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
            gradient_checkpointing=gc,
            warmup_ratio=0.0,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        )
        trainer(tmp_path, limit_val_batches=0, **kwargs).fit(module, tiny_data(batch_size=batch_size))
        return _adapters(module)

    def assert_same(a, b):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)

    plain = run(max_steps=2)
    assert_same(plain, run(max_steps=2, gc=True))  # recomputation changes nothing, frozen inputs included
    # two accumulated batches of 8 make the same update as one batch of 16
    big = run(batch_size=16, max_steps=1)
    assert_same(big, run(batch_size=8, max_steps=1, accumulate_grad_batches=2))
    assert any(not torch.equal(big[k], plain[k]) for k in big)


def test_bad_input_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        KaSAModule(backbone="./no/such/model").configure_model()
    with pytest.raises(FileNotFoundError, match="pip install not-a-package"):
        KaSAModule(backbone="pkg://not_a_package/model").configure_model()
    with pytest.raises(ValueError, match="regression needs num_labels=1"):
        KaSAModule(task="regression", num_labels=3)
    with pytest.raises(ValueError, match="could not be built for task 'causal_lm'"):
        tiny_module(task="causal_lm", backbone_config={"model_type": "clip"}).configure_model()
    module = tiny_module()
    module.configure_model()
    batch = next(iter(ready(tiny_data()).train_dataloader()))
    batch.pop("labels")
    with pytest.raises(ValueError, match="no 'labels'"):
        module.training_step(batch, 0)
    empty = tiny_data(train_size=1)
    ready(empty)
    empty.train_set = []
    with pytest.raises(ValueError, match="train split is empty"):
        empty.train_dataloader()


def test_label_smoothing_and_cosine_warmup_steps(tmp_path):
    from lightning_helpers import ready

    gpt = {"model_type": "gpt2", "vocab_size": 30522, "n_positions": 64, "n_embd": 32, "n_layer": 1, "n_head": 4}
    module = tiny_module(
        task="causal_lm",
        backbone_config=gpt,
        label_smoothing=0.1,
        adapter=AdapterConfig(r=2, target_modules=["c_attn"]),
    )
    module.configure_model()
    module.eval()
    batch = next(iter(ready(tiny_data()).train_dataloader()))
    batch = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100),
    }
    with torch.no_grad():
        out = module.model(**batch)
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = labels != -100
        logp = torch.log_softmax(logits[keep], -1)
        expected = (0.9 * -logp.gather(1, labels[keep][:, None]).squeeze(1) - 0.1 * logp.mean(-1)).mean()
        torch.testing.assert_close(module.task_loss(batch, out), expected, atol=1e-5, rtol=1e-5)
        assert not torch.isclose(module.task_loss(batch, out), out.loss)
    t = trainer(tmp_path, max_steps=10, limit_val_batches=0)
    cosine = tiny_module(schedule="cosine", warmup_steps=4, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    t.fit(cosine, tiny_data())
    sched = t.lr_scheduler_configs[0].scheduler
    lrs = [sched.lr_lambdas[0](step) for step in range(11)]
    assert lrs[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lrs[10] == pytest.approx(0.0, abs=1e-9)


def test_wrapper_prefixes_are_removed_from_checkpoint_names():
    from kasa_lightning.kasa.inject import unwrapped_name as _unwrapped_name

    assert (
        _unwrapped_name("model.layers.0._fsdp_wrapped_module.self_attn.q_proj.delta_u")
        == "model.layers.0.self_attn.q_proj.delta_u"
    )
    assert (
        _unwrapped_name("_orig_mod.bert.encoder.layer.0._checkpoint_wrapped_module.attention.self.query.delta_v")
        == "bert.encoder.layer.0.attention.self.query.delta_v"
    )


def test_default_adamw_is_fused_unless_clipping(tmp_path):
    t = trainer(tmp_path, max_steps=1)
    t.fit(tiny_module(), tiny_data(train_size=8))
    opt = t.optimizers[0]
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    # Lightning refuses to clip gradients with a fused optimiser under mixed precision: fall back to foreach
    t = trainer(tmp_path, max_steps=1, gradient_clip_val=1.0, precision="bf16-mixed")
    t.fit(tiny_module(), tiny_data(train_size=8))
    assert not t.optimizers[0].defaults["fused"]
    # a factory the user chose is used as given
    t = trainer(tmp_path, max_steps=1)
    t.fit(tiny_module(optimizer=lambda p: torch.optim.AdamW(p, lr=0.01)), tiny_data(train_size=8))
    assert not t.optimizers[0].defaults["fused"] and t.optimizers[0].defaults["lr"] == 0.01


def test_resumable_sampler_shards_like_distributed_sampler_and_skips_per_rank():
    from torch.utils.data import DistributedSampler

    from kasa_lightning.datamodules import ResumableSampler

    data = list(range(11))
    single = ResumableSampler(data, seed=3)
    single.set_epoch(2)
    assert list(single) == torch.randperm(11, generator=torch.Generator().manual_seed(5)).tolist()
    ranks = [ResumableSampler(data, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    shares = [list(s) for s in ranks]
    assert isinstance(ranks[0], DistributedSampler)  # so Lightning does not wrap it again
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == 6
    assert set(shares[0]) | set(shares[1]) == set(data)  # 12 slots: one index repeated to pad
    ranks[1].skip(epoch=2, samples=4)
    assert list(ranks[1]) == shares[1][4:]
    assert list(ranks[1]) == shares[1]  # the skip applies once
