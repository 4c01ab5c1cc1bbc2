"""``python -m kasa_lightning eval`` (``kasa_lightning.harness``): lm-evaluation-harness on the adapted model in memory.

A tiny LLaMA and a word-level tokenizer are saved to a temporary folder with two local tasks (multiple choice and
generate_until). The harness's accuracy is checked against a log-likelihood ranking computed here with plain torch
(the sum of the continuation's token log-probabilities, tokenised as lm-eval does: context + continuation encoded
whole, the continuation being the tokens after the context's), its generations against the model's own greedy
``generate``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

COLORS = ["red", "green", "blue", "yellow", "black", "white", "pink", "brown"]
ANIMALS = ["cat", "dog", "bird", "fish", "cow", "horse", "sheep", "goat"]
TARGETS = ["q_proj", "v_proj"]
MODEL_ARGS = [
    "--model.task",
    "causal_lm",
    "--model.adapter.method",
    "kasa",
    "--model.adapter.r",
    "24",
    "--model.adapter.target_modules",
    "[q_proj,v_proj]",
]


def _docs(n: int = 12) -> list[dict]:
    rng = random.Random(0)
    docs = []
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        docs.append(
            {"question": f"what color is the {animal} ?", "choices": rng.sample(COLORS, 4), "label": rng.randrange(4)}
        )
    return docs


def _context(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny LLaMA with a word-level tokenizer in ``model/``, the tasks ``tiny_colors`` (multiple choice) and
    ``tiny_gen`` (generate_until) in ``tasks/`` with their JSONL data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("harness")
    docs = _docs()
    words = sorted(
        {w for d in docs for w in d["question"].split()} | set(COLORS) | set(ANIMALS) | {"Question", ":", "Answer"}
    )
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "colors.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "colors.yaml").write_text(
        "task: tiny_colors\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'colors.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    gen = [{"question": d["question"], "answer": d["choices"][d["label"]]} for d in docs[:4]]
    (tasks / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    (tasks / "gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'gen.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n  until: ['</s>']\n  max_gen_toks: 1\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 2.0\n"
    )
    return {"root": root, "model": model_dir, "tasks": tasks, "docs": docs, "gen": gen}


def _module(model_dir: Path, seed: int = 0, **adapter):
    from lightning.pytorch import seed_everything

    from kasa_lightning import AdapterConfig, KaSAModule

    seed_everything(seed)
    config = AdapterConfig(method="kasa", r=24, target_modules=TARGETS, **adapter)
    module = KaSAModule(backbone=str(model_dir), task="causal_lm", adapter=config)
    module.configure_model()
    return module.eval()


def _loglikelihoods(model, tokenizer, docs: list[dict]) -> list[list[float]]:
    """Per document and choice: sum of log p(continuation token | everything before it), the continuation being
    " <choice>" after the context, split off the whole encoding at the context's length (as lm-eval does)."""
    out = []
    model.eval()
    with torch.no_grad():
        for doc in docs:
            context = _context(doc)
            row = []
            for choice in doc["choices"]:
                whole = tokenizer.encode(context + " " + choice)
                prefix = tokenizer.encode(context)
                assert whole[: len(prefix)] == prefix
                ids = torch.tensor([whole])
                logp = torch.log_softmax(model(ids[:, :-1]).logits.float(), dim=-1)[0]
                row.append(sum(logp[len(prefix) - 1 + i, tok].item() for i, tok in enumerate(whole[len(prefix) :])))
            out.append(row)
    return out


def _accuracy(lls: list[list[float]], docs: list[dict]) -> float:
    picks = [max(range(len(row)), key=row.__getitem__) for row in lls]
    return sum(p == d["label"] for p, d in zip(picks, docs)) / len(docs)


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _eval(args: list[str]) -> dict:
    from kasa_lightning.harness import run

    return run(args)


# ---------------------------------------------------------------------- the real command
def test_command_scores_the_adapted_model_as_its_own_ranking(setup, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    cmd = [
        sys.executable,
        "-m",
        "kasa_lightning",
        "eval",
        "--seed_everything",
        "0",
        "--model.backbone",
        str(setup["model"]),
    ]
    cmd += MODEL_ARGS + ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"]), "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(out.read_text())
    acc = written["results"]["tiny_colors"]["acc,none"]
    module = _module(setup["model"])
    tokenizer = _tokenizer(setup["model"])
    assert acc == pytest.approx(_accuracy(_loglikelihoods(module.model, tokenizer, setup["docs"]), setup["docs"]))
    assert written["versions"]["tiny_colors"] == 1.0 and written["n-shot"]["tiny_colors"] == 0
    assert written["limit"] is None and written["ckpt_path"] is None and written["seed_everything"] == 0
    assert written["model"]["adapter"]["r"] == 24 and written["model"]["adapter"]["target_modules"] == TARGETS


def test_scores_are_those_of_the_adapted_layers_in_memory(setup) -> None:
    """Per document and choice, lm-eval's log-likelihoods are the adapted model's (not the original base's)."""
    from transformers import AutoModelForCausalLM

    from kasa_lightning.harness import evaluate_module

    module = _module(setup["model"])
    tokenizer = _tokenizer(setup["model"])
    results = evaluate_module(
        module, "tiny_colors", include_path=str(setup["tasks"]), batch_size=4, log_samples=True, bootstrap_iters=0
    )
    ours = _loglikelihoods(module.model, tokenizer, setup["docs"])
    samples = sorted(results["samples"]["tiny_colors"], key=lambda s: s["doc_id"])
    harness = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    assert torch.allclose(torch.tensor(harness), torch.tensor(ours), atol=1e-4)
    assert results["results"]["tiny_colors"]["acc,none"] == pytest.approx(_accuracy(ours, setup["docs"]))
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    original = _loglikelihoods(base, tokenizer, setup["docs"])  # r=24 of 32 singular values dropped: far apart
    assert (torch.tensor(harness) - torch.tensor(original)).abs().max() > 1e-2


# ---------------------------------------------------------------------- a trained checkpoint
def _train_briefly(model_dir: Path, docs: list[dict], ckpt: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from kasa_lightning import AdapterConfig, KaSAModule

    L.seed_everything(0)
    tokenizer = _tokenizer(model_dir)
    rows = []
    for doc in docs:
        prompt = tokenizer.encode(_context(doc))
        ids = tokenizer.encode(_context(doc) + " " + doc["choices"][doc["label"]])
        labels = [-100] * len(prompt) + ids[len(prompt) :]
        rows.append(
            {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids)), "labels": torch.tensor(labels)}
        )
    module = KaSAModule(
        backbone=str(model_dir),
        task="causal_lm",
        adapter=AdapterConfig(method="kasa", r=24, target_modules=TARGETS),
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.05),
    )
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(rows, batch_size=len(rows)))
    trainer.save_checkpoint(ckpt)


@pytest.fixture(scope="module")
def trained(setup) -> Path:
    run_dir = setup["root"] / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    _train_briefly(setup["model"], setup["docs"], ckpt)
    (run_dir / "metrics.json").write_text(json.dumps({"format": 1, "fit": {"finished": True, "global_step": 30}}))
    return ckpt


def test_ckpt_path_scores_the_trained_adapters(setup, trained: Path) -> None:
    from kasa_lightning import KaSAModule

    base_args = ["--seed_everything", "0", "--model.backbone", str(setup["model"]), *MODEL_ARGS]
    task_args = ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"])]
    written = _eval(base_args + task_args + ["--ckpt_path", str(trained)])
    run_dir = trained.parent.parent
    assert json.loads((run_dir / "eval.json").read_text())["results"] == written["results"]  # the default output
    acc = written["results"]["tiny_colors"]["acc,none"]
    loaded = KaSAModule.load_from_checkpoint(str(trained)).eval()
    tokenizer = _tokenizer(setup["model"])
    trained_lls = _loglikelihoods(loaded.model, tokenizer, setup["docs"])
    assert acc == pytest.approx(_accuracy(trained_lls, setup["docs"]))
    fresh_lls = _loglikelihoods(_module(setup["model"]).model, tokenizer, setup["docs"])
    base_acc = _accuracy(fresh_lls, setup["docs"])
    # trained on the right answers: ranked right far more often than by the untrained adapters (not always: an
    # animal asked twice can have two right colours)
    assert acc >= 0.75 and base_acc <= acc - 0.25
    assert (torch.tensor(trained_lls) - torch.tensor(fresh_lls)).abs().max() > 0.1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit"]["finished"] is True  # kept
    entry = metrics["eval"]["tasks"]["tiny_colors"]
    assert entry["metrics"]["acc,none"] == acc and entry["ckpt_path"] == str(trained.resolve())
    assert entry["version"] == 1.0 and entry["n_shot"] == 0 and entry["limit"] is None


def test_generation_goes_through_generate_with_the_adapters(setup, trained: Path) -> None:
    from kasa_lightning import KaSAModule, adapted_layers
    from kasa_lightning.harness import evaluate_module

    module = KaSAModule.load_from_checkpoint(str(trained)).eval()
    tokenizer = _tokenizer(setup["model"])
    calls = []
    for _, layer in adapted_layers(module.model):
        layer.register_forward_hook(lambda *_: calls.append(1))
    generate = module.model.generate
    generated = []

    def counting_generate(*args, **kwargs):
        generated.append(1)
        return generate(*args, **kwargs)

    module.model.generate = counting_generate
    results = evaluate_module(
        module, ["tiny_gen"], include_path=str(setup["tasks"]), log_samples=True, bootstrap_iters=0
    )
    del module.model.generate
    assert generated and calls  # generate ran, through the adapted layers
    samples = sorted(results["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    ours = []
    with torch.no_grad():
        for doc in setup["gen"]:
            ids = torch.tensor([tokenizer.encode(_context(doc))])
            out = module.model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, pad_token_id=3)
            ours.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert [s["resps"][0][0] for s in samples] == ours
    expected = sum(o.strip() == d["answer"] for o, d in zip(ours, setup["gen"])) / len(ours)
    assert results["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(expected)
    assert expected > 0  # the trained adapters answer some of them (the word after "Answer:")


def test_limit_is_honoured_on_a_lowrank_model(setup, tmp_path: Path) -> None:
    args = ["--seed_everything", "0", "--model.backbone", str(setup["model"]), *MODEL_ARGS]
    args += ["--model.adapter.truncation_mode", "lowrank", "--tasks", "tiny_colors", "--limit", "5"]
    written = _eval(args + ["--include_path", str(setup["tasks"]), "--output", str(tmp_path / "e.json")])
    assert written["limit"] == 5 and written["n-samples"]["tiny_colors"]["effective"] == 5
    module = _module(setup["model"], truncation_mode="lowrank")
    docs = setup["docs"][:5]
    lls = _loglikelihoods(module.model, _tokenizer(setup["model"]), docs)
    assert written["results"]["tiny_colors"]["acc,none"] == pytest.approx(_accuracy(lls, docs))
    assert not (tmp_path / "metrics.json").exists()  # no run, no metrics file


# ---------------------------------------------------------------------- bad input
def _fails(args: list[str], capsys) -> str:
    from kasa_lightning.harness import main

    assert main(args) == 2
    return capsys.readouterr().err


def test_bad_input_is_refused_naming_the_setting(setup, tmp_path: Path, capsys, monkeypatch) -> None:
    model = ["--model.backbone", str(setup["model"]), *MODEL_ARGS]
    err = _fails(model + ["--tasks", "tiny_colors", "--include_path", str(tmp_path / "nowhere")], capsys)
    assert "--include_path" in err and "no such directory" in err
    err = _fails(
        ["--model.backbone", str(setup["model"]), "--model.task", "causal_lm"]
        + ["--model.backbone_config", '{"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4}']
        + ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"])],
        capsys,
    )
    assert "model.backbone_config" in err and "--ckpt_path" in err and "random" in err
    err = _fails(
        ["--model.backbone", str(setup["model"]), "--tasks", "tiny_colors", "--include_path", str(setup["tasks"])],
        capsys,
    )
    assert "model.task" in err and "causal_lm" in err  # the default task is classification
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = _fails(model + ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"])], capsys)
    assert "one process" in err and "WORLD_SIZE=2" in err
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    err = _fails(model + ["--tasks", "tiny_colors"], capsys)
    assert 'pip install "kasa-lightning[eval]"' in err


@pytest.mark.slow  # lm-eval builds its index of ~15k task files (20-30 s) to know a name is not there
def test_unknown_task_is_refused_with_suggestions(setup, capsys) -> None:
    model = ["--model.backbone", str(setup["model"]), *MODEL_ARGS]
    err = _fails(model + ["--tasks", "tiny_colors,arc_easyy", "--include_path", str(setup["tasks"])], capsys)
    assert "unknown task(s) 'arc_easyy'" in err and "arc_easy" in err and "--include_path" in err


def _hub_task(tasks: Path) -> None:
    tasks.mkdir()
    (tasks / "hub.yaml").write_text(
        "task: needs_hub\ndataset_path: no-such-org/no-such-dataset\ndataset_name: main\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
    )


def test_uncached_hub_data_fails_at_once_offline_and_without_network(setup, tmp_path: Path, monkeypatch) -> None:
    import datasets
    from huggingface_hub import constants

    from kasa_lightning.harness import TaskDataUnavailableError, prepare_tasks

    _hub_task(tmp_path / "tasks")
    t0 = time.monotonic()
    with pytest.raises(TaskDataUnavailableError) as info:
        prepare_tasks("needs_hub", str(tmp_path / "tasks"))
    message = str(info.value)
    for part in (
        "needs_hub",
        "'no-such-org/no-such-dataset' (main)",
        "offline mode",
        "--include_path",
        "data_files",
        "network",
    ):
        assert part in message
    # online mode, but the Hub does not answer (a closed local port): one probe, then the same refusal
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(TaskDataUnavailableError, match="cannot be reached"):
        prepare_tasks("needs_hub", str(tmp_path / "tasks"))
    assert time.monotonic() - t0 < 15  # huggingface_hub's retries alone take 26 s
    assert constants.HF_HUB_OFFLINE is False  # the forced offline mode was undone


def test_lm_eval_is_imported_only_by_the_eval_command() -> None:
    code = (
        "import sys, kasa_lightning.cli, kasa_lightning.harness;"
        "assert 'lm_eval' not in sys.modules, 'imported lm_eval';"
        "assert 'eval' in kasa_lightning.cli.COMMANDS"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


ROOT = Path(__file__).resolve().parents[1]


def test_example_task_runs_offline_from_its_generated_data(setup, tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_capitals", ROOT / "examples/lm_eval_task/make_capitals.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    make.write(tmp_path / "capitals.jsonl")
    shipped = ROOT / "examples/lm_eval_task/capitals.jsonl"
    assert (tmp_path / "capitals.jsonl").read_bytes() == shipped.read_bytes()  # the script makes the shipped file
    monkeypatch.chdir(ROOT)  # the YAML's data_files path is relative to the repository root
    args = ["--seed_everything", "0", "--model.backbone", str(setup["model"]), *MODEL_ARGS]
    args += ["--tasks", "kasa_capitals", "--include_path", "examples/lm_eval_task", "--limit", "3"]
    written = _eval(args + ["--output", str(tmp_path / "e.json")])
    assert written["n-samples"]["kasa_capitals"] == {"original": len(make.CAPITALS), "effective": 3}
    assert 0.0 <= written["results"]["kasa_capitals"]["acc,none"] <= 1.0
    monkeypatch.chdir(tmp_path)  # elsewhere, the relative data path is missing: said so
    from kasa_lightning.harness import EvalSetupError, prepare_tasks

    with pytest.raises(EvalSetupError, match="relative data_files paths are read from the working directory"):
        prepare_tasks("kasa_capitals", str(ROOT / "examples/lm_eval_task"))
