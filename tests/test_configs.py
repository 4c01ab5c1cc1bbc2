"""Every shipped config loads through the CLI parser and instantiates, with the backbone replaced by a tiny model
of the same architecture, so that no config (or its target module names) can rot."""

import json
from pathlib import Path

import pytest

from kasa_lightning.cli import KaSACLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OVERLAYS = ("strategies", "methods", "ablation", "variants")
TINY = {
    "roberta": {"model_type": "roberta", "max_position_embeddings": 64},
    "deberta": {"model_type": "deberta-v2", "max_position_embeddings": 64},
    "gpt2": {"model_type": "gpt2", "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4},
    "llama": {"model_type": "llama"},
    "mistral": {"model_type": "mistral"},
    "gemma": {"model_type": "gemma", "head_dim": 32},
    "minilm": {"model_type": "bert", "max_position_embeddings": 64},
}
COMMON = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
DECODER = {"num_key_value_heads": 2, "hidden_size": 128, "intermediate_size": 256}  # r = 32 must fit k_proj


def _tiny(backbone: str) -> dict:
    kind = next(k for k in TINY if k in backbone.lower().replace("meta-llama", "llama").replace("all_minilm", "minilm"))
    if kind == "gpt2":
        return {**TINY[kind], "vocab_size": 128}
    return {**COMMON, **(DECODER if kind in ("llama", "mistral", "gemma") else {}), **TINY[kind]}


TASK_CONFIGS = sorted(
    p.relative_to(CONFIGS).as_posix()
    for p in CONFIGS.rglob("*.yaml")
    if p.relative_to(CONFIGS).parts[0] not in (*OVERLAYS, "own-data")  # own-data: run on files in test_text_datamodule
)
OVERLAY_CONFIGS = sorted(
    p.relative_to(CONFIGS).as_posix()
    for p in CONFIGS.rglob("*.yaml")
    if p.relative_to(CONFIGS).parts[0] in ("methods", "ablation")
)


def _instantiate(*configs: str):
    import yaml

    first = yaml.safe_load((CONFIGS / configs[0]).read_text())
    backbone = first["model"]["init_args"]["backbone"]
    args = [
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--model.init_args.backbone_config",
        json.dumps(_tiny(backbone)),
    ]
    args = [a for c in configs for a in ("--config", str(CONFIGS / c))] + args  # later files override earlier
    cli = KaSACLI(args=args, run=False)
    cli.model.configure_model()  # builds the tiny backbone and applies the adapters: target names must exist
    return cli


def test_the_paper_configs_are_all_there():
    assert len([c for c in TASK_CONFIGS if c.startswith("glue/")]) == 8 + 6 + 6
    assert {c for c in TASK_CONFIGS if not c.startswith(("glue/", "instruct/"))} == {
        "quickstart.yaml",
        "e2e/gpt2-medium.yaml",
        "e2e/gpt2-large.yaml",
        "commonsense/llama2-7b.yaml",
        "commonsense/llama3-8b.yaml",
    }
    assert len([c for c in TASK_CONFIGS if c.startswith("instruct/")]) == 4 * 5


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_task_config_instantiates(name):
    cli = _instantiate(name)
    assert cli.model.model is not None and any(p.requires_grad for p in cli.model.parameters())
    assert cli.datamodule is not None and cli.trainer is not None


@pytest.mark.parametrize("name", OVERLAY_CONFIGS)
def test_method_and_ablation_overlays_compose_with_a_task_config(name):
    cli = _instantiate("glue/roberta-base/rte.yaml", name)
    cfg = cli.model.adapter_config
    expected = {
        "methods/lora.yaml": "lora",
        "methods/pissa.yaml": "pissa",
        "methods/milora.yaml": "milora",
        "ablation/1-lora.yaml": "lora",
    }.get(name, "kasa")
    assert cfg.method == expected
    if expected != "kasa":
        assert cfg.beta == cfg.gamma == 0
    if name.startswith("ablation/2"):
        assert not cfg.singular_values and cfg.truncate
    if name.startswith("ablation/4"):
        assert cfg.beta == 0.01 and cfg.gamma == 0  # RTE's beta from the task config
    assert cfg.r == 8 and cfg.reg_form == "reference"  # the task config's settings are kept


@pytest.mark.parametrize(
    "name", [*TASK_CONFIGS, *(p.relative_to(CONFIGS).as_posix() for p in sorted(CONFIGS.glob("own-data/*.yaml")))]
)
def test_every_task_config_states_its_effective_batch(name):
    """With ``data.global_batch_size`` set, more devices change the accumulation, not the effective batch."""
    import yaml

    init = yaml.safe_load((CONFIGS / name).read_text())["data"]["init_args"]
    assert init.get("global_batch_size"), f"{name}: set data.global_batch_size"
    assert init["global_batch_size"] % init["batch_size"] == 0
