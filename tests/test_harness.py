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
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from harness_support import (  # noqa: E402
    MODEL_ARGS,
    TARGETS,
    accuracy,
    adapted_module,
    build,
    context,
    load_tokenizer,
    loglikelihoods,
    run_eval,
    train_briefly,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("harness"))


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
    module = adapted_module(setup["model"])
    tokenizer = load_tokenizer(setup["model"])
    assert acc == pytest.approx(accuracy(loglikelihoods(module.model, tokenizer, setup["docs"]), setup["docs"]))
    assert written["versions"]["tiny_colors"] == 1.0 and written["n-shot"]["tiny_colors"] == 0
    assert written["limit"] is None and written["ckpt_path"] is None and written["seed_everything"] == 0
    assert written["model"]["adapter"]["r"] == 24 and written["model"]["adapter"]["target_modules"] == TARGETS


def test_scores_are_those_of_the_adapted_layers_in_memory(setup) -> None:
    """Per document and choice, lm-eval's log-likelihoods are the adapted model's (not the original base's)."""
    from transformers import AutoModelForCausalLM

    from kasa_lightning.harness import evaluate_module

    module = adapted_module(setup["model"])
    tokenizer = load_tokenizer(setup["model"])
    results = evaluate_module(
        module,
        "tiny_colors",
        include_path=str(setup["tasks"]),
        batch_size=4,
        log_samples=True,
        bootstrap_iters=0,
        device="cpu",
    )
    ours = loglikelihoods(module.model, tokenizer, setup["docs"])
    samples = sorted(results["samples"]["tiny_colors"], key=lambda s: s["doc_id"])
    harness = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    assert torch.allclose(torch.tensor(harness), torch.tensor(ours), atol=1e-4)
    assert results["results"]["tiny_colors"]["acc,none"] == pytest.approx(accuracy(ours, setup["docs"]))
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    original = loglikelihoods(base, tokenizer, setup["docs"])  # r=24 of 32 singular values dropped: far apart
    assert (torch.tensor(harness) - torch.tensor(original)).abs().max() > 1e-2


# ---------------------------------------------------------------------- a trained checkpoint
@pytest.fixture(scope="module")
def trained(setup) -> Path:
    run_dir = setup["root"] / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    train_briefly(setup["model"], setup["docs"], ckpt)
    (run_dir / "metrics.json").write_text(json.dumps({"format": 1, "fit": {"finished": True, "global_step": 30}}))
    return ckpt


def test_ckpt_path_scores_the_trained_adapters(setup, trained: Path) -> None:
    from kasa_lightning import KaSAModule

    base_args = ["--seed_everything", "0", "--model.backbone", str(setup["model"]), *MODEL_ARGS]
    task_args = ["--tasks", "tiny_colors", "--include_path", str(setup["tasks"])]
    written = run_eval(base_args + task_args + ["--ckpt_path", str(trained)])
    run_dir = trained.parent.parent
    assert json.loads((run_dir / "eval.json").read_text())["results"] == written["results"]  # the default output
    acc = written["results"]["tiny_colors"]["acc,none"]
    loaded = KaSAModule.load_from_checkpoint(str(trained)).eval()
    tokenizer = load_tokenizer(setup["model"])
    trained_lls = loglikelihoods(loaded.model, tokenizer, setup["docs"])
    assert acc == pytest.approx(accuracy(trained_lls, setup["docs"]))
    fresh_lls = loglikelihoods(adapted_module(setup["model"]).model, tokenizer, setup["docs"])
    base_acc = accuracy(fresh_lls, setup["docs"])
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
    tokenizer = load_tokenizer(setup["model"])
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
        module, ["tiny_gen"], include_path=str(setup["tasks"]), log_samples=True, bootstrap_iters=0, device="cpu"
    )
    del module.model.generate
    assert generated and calls  # generate ran, through the adapted layers
    samples = sorted(results["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    ours = []
    with torch.no_grad():
        for doc in setup["gen"]:
            ids = torch.tensor([tokenizer.encode(context(doc))])
            out = module.model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, pad_token_id=3)
            ours.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert [s["resps"][0][0] for s in samples] == ours
    expected = sum(o.strip() == d["answer"] for o, d in zip(ours, setup["gen"])) / len(ours)
    assert results["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(expected)
    assert expected > 0  # the trained adapters answer some of them (the word after "Answer:")


def test_limit_is_honoured_on_a_lowrank_model(setup, tmp_path: Path) -> None:
    args = ["--seed_everything", "0", "--model.backbone", str(setup["model"]), *MODEL_ARGS]
    args += ["--model.adapter.truncation_mode", "lowrank", "--tasks", "tiny_colors", "--limit", "5"]
    written = run_eval(args + ["--include_path", str(setup["tasks"]), "--output", str(tmp_path / "e.json")])
    assert written["limit"] == 5 and written["n-samples"]["tiny_colors"]["effective"] == 5
    module = adapted_module(setup["model"], truncation_mode="lowrank")
    docs = setup["docs"][:5]
    lls = loglikelihoods(module.model, load_tokenizer(setup["model"]), docs)
    assert written["results"]["tiny_colors"]["acc,none"] == pytest.approx(accuracy(lls, docs))
    assert not (tmp_path / "metrics.json").exists()  # no run, no metrics file


# ---------------------------------------------------------------------- bad input


def test_a_fit_runs_own_config_and_checkpoint(setup, tmp_path: Path) -> None:
    """``eval --config <run>/config.yaml --ckpt_path <run>/checkpoints/<its checkpoint>``: the config a fit saved parses
    as it is (its data section, trainer, ckpt_path and weights_only keys), and the run's metrics.json gains the
    eval section beside the fit."""
    from harness_support import commonsense_config

    from kasa_lightning import KaSAModule
    from kasa_lightning.cli import main

    root = tmp_path / "runs"
    config = commonsense_config(tmp_path, setup["model"], max_steps=2, logger=True, enable_progress_bar=False)
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)])
    (run_dir,) = (root / "lightning_logs").iterdir()
    (last,) = (run_dir / "checkpoints").glob("*.ckpt")
    written = run_eval(
        ["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last), "--tasks", "tiny_colors"]
        + ["--include_path", str(setup["tasks"])]
    )
    loaded = KaSAModule.load_from_checkpoint(str(last)).eval()
    lls = loglikelihoods(loaded.model, load_tokenizer(setup["model"]), setup["docs"])
    assert written["results"]["tiny_colors"]["acc,none"] == pytest.approx(accuracy(lls, setup["docs"]))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit"]["finished"] and metrics["eval"]["requested"] == ["tiny_colors"]
    assert (run_dir / "eval.json").is_file()
