"""``target_modules="auto"``: the paper's targets from the model's architecture, checked on real (tiny) models of
every architecture in the table, through ``apply_adapters`` and through the CLI's parser."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from kasa_lightning.kasa import AdapterConfig, adapted_layers, adapter_config, apply_adapters
from kasa_lightning.kasa.targets import AUTO_TARGETS, resolve_target_modules

# the smallest config of each architecture that builds
_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=48,
    vocab_size=128,
    max_position_embeddings=64,
    head_dim=8,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
)


def _tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **_TINY)
    return AutoModel.from_config(config)


@pytest.mark.parametrize("model_type", sorted(AUTO_TARGETS))
def test_auto_adapts_the_query_and_value_projections_of_every_block(model_type):
    model = apply_adapters(_tiny(model_type), AdapterConfig(r=2, target_modules="auto"))
    names = [name for name, _ in adapted_layers(model)]
    wanted = AUTO_TARGETS[model_type]
    per_block = {name.rsplit(".", 1)[-1] for name in names}
    assert per_block == set(wanted)
    assert len(names) == 2 * len(wanted)  # two blocks, one layer per target each
    # the state (and so state files and PEFT exports) records the layers by name, not "auto"
    assert adapter_config(model).target_modules == list(wanted)


def test_minilm_is_bert_and_gets_query_value():
    from conftest import minilm_dir
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    assert model.config.model_type == "bert"
    resolved = resolve_target_modules(model, AdapterConfig(target_modules="auto"))
    assert resolved.target_modules == ["query", "value"]


def test_unknown_architecture_is_refused_with_its_layer_names():
    model = _tiny("t5")
    with pytest.raises(ValueError, match="model_type 't5'") as err:
        apply_adapters(model, AdapterConfig(r=2, target_modules="auto"))
    message = str(err.value)
    assert "'q'" in message and "'v'" in message and "'wo'" in message  # T5's attention / MLP layer names
    assert not any(True for _ in adapted_layers(model))  # nothing was changed


def test_plain_module_without_config_is_refused(tiny_mlp):
    with pytest.raises(ValueError, match=r"TinyMLP \(no config.model_type\).*\['fc1', 'fc2', 'head'\]"):
        apply_adapters(tiny_mlp, AdapterConfig(r=2, target_modules="auto"))


def test_auto_is_alone_and_named_targets_stay_as_given():
    with pytest.raises(ValueError, match="target_modules"):
        AdapterConfig(target_modules=["auto", "query"])
    cfg = AdapterConfig(target_modules=["query"])
    assert resolve_target_modules(_tiny("bert"), cfg) is cfg
    assert AdapterConfig(target_modules="auto").target_modules == ["auto"]
    assert AdapterConfig.from_dict(AdapterConfig(target_modules="auto").to_dict()).target_modules == ["auto"]


def test_cli_accepts_auto():
    from kasa_lightning.cli import KaSACLI

    cli = KaSACLI(
        args=[
            "--model.backbone_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, "
            "num_attention_heads: 4, intermediate_size: 48, vocab_size: 128}",
            "--model.adapter.target_modules=auto",
            "--model.adapter.r=2",
            "--data=kasa_lightning.datamodules.SentimentDemoDataModule",
        ],
        run=False,
    )
    assert cli.model.adapter_config.target_modules == ["auto"]
    cli.model.configure_model()
    assert {n.rsplit(".", 1)[-1] for n, _ in adapted_layers(cli.model.model)} == {"query", "value"}
