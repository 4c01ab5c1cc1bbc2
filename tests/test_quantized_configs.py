"""``model.quantization`` through the CLI: the nf4/int8 overlays compose with every causal-LM and GLUE config family
(each instantiated on a tiny saved model of its architecture), a real ``fit`` on a tiny saved LLaMA in NF4, and the
settings a quantised base refuses (each naming the setting)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch

pytest.importorskip("bitsandbytes")

from quantized_lightning_helpers import save_tiny_causal, write_alpaca  # noqa: E402

from kasa_lightning import AdapterConfig, KaSAModule, adapted_layers, adapter_parameters, adapter_state_dict  # noqa: E402
from kasa_lightning.cli import main  # noqa: E402
from kasa_lightning.kasa import QuantizationConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BASE = {4: "Linear4bit", 8: "Linear8bitLt"}
OVERLAY = {"nf4": ("strategies/nf4.yaml", 4), "int8": ("strategies/int8.yaml", 8)}
# one config per family (the families share their model section up to the backbone name and the targets)
FAMILIES = {
    "instruct/llama3-8b/alpaca.yaml": ("llama", "causal"),
    "instruct/llama2-13b/coding.yaml": ("llama", "causal"),
    "instruct/mistral-7b/summarize.yaml": ("mistral", "causal"),
    "instruct/gemma-7b/closed_qa.yaml": ("gemma", "causal"),
    "commonsense/llama2-7b.yaml": ("llama", "causal"),
    "glue/roberta-base/rte.yaml": ("roberta", "classifier"),
    "glue/deberta-v3-base/mrpc.yaml": ("deberta-v2", "classifier"),
}
CASES = [(name, "nf4") for name in FAMILIES] + [
    ("commonsense/llama3-8b.yaml", "int8"),
    ("glue/roberta-large/cola.yaml", "int8"),
]
SMALL = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, str], Path]:  # noqa: ANN001
    """A saved tiny pretrained model per (model_type, head)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    out = {}
    for model_type, head in {*FAMILIES.values(), ("llama", "causal"), ("roberta", "classifier")}:
        extra = {"num_key_value_heads": 2, "intermediate_size": 128} if head == "causal" else {"intermediate_size": 96}
        if model_type == "gemma":
            extra["head_dim"] = 16
        if head == "classifier":
            extra["max_position_embeddings"] = 64
        config = AutoConfig.for_model(model_type, **SMALL, **extra)
        torch.manual_seed(0)
        auto = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
        folder = tmp_path_factory.mktemp(f"{model_type}-{head}")
        auto.from_config(config).save_pretrained(folder)
        out[(model_type, head)] = folder
    return out


@pytest.mark.parametrize(("name", "overlay"), CASES)
def test_overlay_composes_with_each_config_family(folders, name: str, overlay: str) -> None:  # noqa: ANN001
    from kasa_lightning._lightning_cli import KaSACLI

    model_type = "roberta" if name.startswith("glue/roberta") else ("llama" if name.startswith("commonsense") else None)
    kind = FAMILIES.get(name, (model_type, "classifier" if name.startswith("glue") else "causal"))
    file, bits = OVERLAY[overlay]
    args = ["--config", str(CONFIGS / name), "--config", str(CONFIGS / file)]
    args += ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.precision", "32-true"]
    args += ["--model.init_args.backbone", str(folders[kind]), "--model.init_args.adapter.r", "4"]
    cli = KaSACLI(args=args, run=False)
    assert cli.model.quantization == QuantizationConfig(
        bits=bits, **({"double_quant": True, "compute_dtype": "bfloat16"} if bits == 4 else {})
    )
    cli.model.configure_model()
    layers = list(adapted_layers(cli.model.model))
    assert layers and all(type(layer.base_layer).__name__ == BASE[bits] for _, layer in layers)
    adapters = {id(p) for p in adapter_parameters(cli.model.model)}
    heads = [n for n, p in cli.model.model.named_parameters() if p.requires_grad and id(p) not in adapters]
    if kind[1] == "classifier":  # modules_to_save trains whole: it must stay unquantised, as must the output head
        assert heads and all(p.is_floating_point() for n, p in cli.model.model.named_parameters() if n in heads)
    else:
        assert not heads and type(cli.model.model.lm_head) is torch.nn.Linear


def test_cli_fit_on_an_nf4_base(tmp_path, folders) -> None:  # noqa: ANN001
    folder = save_tiny_causal(tmp_path / "tiny")
    data = write_alpaca(tmp_path / "alpaca.json")
    run = tmp_path / "run"
    cli = main(
        [
            "fit",
            *("--config", str(CONFIGS / "instruct/llama3-8b/alpaca.yaml")),
            *("--config", str(CONFIGS / "strategies/nf4.yaml")),
            *("--model.init_args.backbone", str(folder), "--model.init_args.adapter.r", "4"),
            *("--data.init_args.train_path", str(data), "--data.init_args.test_path", "null"),
            *("--data.init_args.val_size", "0", "--data.init_args.max_length", "64"),
            *("--data.init_args.global_batch_size", "4", "--trainer.max_steps", "3"),
            *("--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(run)),
            *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
            *("--trainer.precision", "bf16-mixed", "--model.init_args.optimizer.init_args.lr", "0.01"),
        ]
    )
    assert cli.trainer.global_step == 3 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    layers = list(adapted_layers(cli.model.model))
    assert len(layers) == 4 and all(type(layer.base_layer).__name__ == "Linear4bit" for _, layer in layers)
    version = run / "lightning_logs" / "version_0"
    saved = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    # adapter-only: the adapters and the removed part; nothing of the quantised base
    assert set(saved["state_dict"]) == {f"model.{k}" for k in adapter_state_dict(cli.model.model)}
    assert saved["hyper_parameters"]["quantization"]["bits"] == 4
    peft = json.loads((version / "export/last/peft-lora/adapter_config.json").read_text())
    assert peft["base_model_name_or_path"] == str(folder)


def test_quantized_settings_refused_with_their_names(tmp_path, folders, capsys) -> None:  # noqa: ANN001
    from lightning_helpers import CPUFSDPStrategy

    tiny = {"model_type": "llama", **SMALL}
    with pytest.raises(ValueError, match=r"model.quantization .* model.backbone_config .* remove"):
        KaSAModule(task="causal_lm", backbone_config=tiny, quantization=QuantizationConfig())
    with pytest.raises(SystemExit):  # the typed argument: jsonargparse refuses it while parsing
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--model.quantization", '{"bits": 3}'])
    err = capsys.readouterr().err
    assert re.search(r'"quantization"(.|\n)*"bits":\s*Expected a typing.Literal\[4, 8\]. Got value: 3', err), err
    folder = folders[("llama", "causal")]
    ids = torch.randint(0, 128, (4, 8))
    batches = torch.utils.data.DataLoader([{"input_ids": i, "labels": i} for i in ids], batch_size=2)

    def fit(quantization: QuantizationConfig, **trainer_args) -> None:  # noqa: ANN003
        module = KaSAModule(
            backbone=str(folder),
            task="causal_lm",
            adapter=AdapterConfig(r=2, target_modules=["q_proj"]),
            quantization=quantization,
        )
        trainer_args.setdefault("accelerator", "cpu")
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, **trainer_args)
        trainer.fit(module, batches)
        assert module.model is None  # refused before the backbone was loaded

    with pytest.raises(ValueError, match=r"trainer.strategy=CPUFSDPStrategy with model.quantization .* QuantState"):
        fit(QuantizationConfig(bits=4, quant_storage="bfloat16"), strategy=CPUFSDPStrategy(), devices=1)
    with pytest.raises(ValueError, match=r"trainer.precision='bf16-true' .*model.quantization.quant_storage='float16'"):
        fit(QuantizationConfig(bits=4, quant_storage="float16"), precision="bf16-true")
