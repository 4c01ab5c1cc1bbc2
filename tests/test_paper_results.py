"""The paper's numbers shipped in the package (``kasa_lightning/experiments/paper/paper_results.json``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kasa_lightning.experiments.paper.results import load, lookup, not_in_paper, paper_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "model, task, method, metric, value",
    [
        ("roberta-base", "sst2", "kasa", "accuracy", 95.2),
        ("roberta-base", "mrpc", "kasa", "accuracy", 90.7),
        ("roberta-base", "cola", "kasa", "mcc", 65.8),
        ("roberta-base", "qnli", "kasa", "accuracy", 93.3),
        ("roberta-base", "rte", "kasa", "accuracy", 81.6),
        ("roberta-base", "stsb", "kasa", "pearson", 91.1),
        ("gpt2-medium", "e2e", "kasa", "BLEU", 70.6),
        ("meta-llama/Meta-Llama-3-8B", "commonsense", "kasa", "accuracy_ARC-Challenge", 79.4),
        ("google/gemma-7b", "mt_bench", "kasa", "judge", 4.97),
        ("microsoft/deberta-v3-base", "cola", "kasa", "mcc", 70.41),
    ],
)
def test_spot_checks_against_the_paper(model, task, method, metric, value):
    result = lookup(model, task, method, metric)
    assert result is not None and result.value == value
    assert result.logged_value == pytest.approx(value / 100 if metric != "judge" else value)


def test_other_cells_and_keys():
    assert lookup("RoBERTa-large", "rte", "lora", "accuracy").value == 85.2
    assert lookup("gpt2-large", "e2e", "kasa", "NIST").logged_value == 8.90  # a score, not a percentage
    assert lookup("meta-llama/Llama-2-7b-hf", "commonsense", "milora", "accuracy_hellaswag").value == 88.2
    assert lookup("mistralai/Mistral-7B-v0.1", "summarization", "pissa", "judge").value == 5.86
    assert lookup("roberta-base", "rte", "kasa", "f1") is None
    assert lookup("bert-base-uncased", "rte", "kasa", "accuracy") is None
    assert paper_model("FacebookAI/roberta-large") == "RoBERTa-large"
    # every table row that has a config: 16 + 8 GLUE rows x 6 tasks, 24 x 5 instruction, 8 x 9 commonsense, 15 x 5 E2E
    counts = {t: sum(r.table == t for r in load()) for t in (1, 2, 3, 11, 12)}
    assert counts == {1: 17 * 6, 2: 24 * 5, 3: 8 * 9, 11: 8 * 6, 12: 15 * 5}


def _paper_key(path: Path) -> tuple[str, str, str]:
    """(backbone, task, metric) of a shipped config, read from its YAML as the sweep does."""
    cfg = yaml.safe_load(path.read_text())
    backbone = cfg["model"]["init_args"]["backbone"]
    data = cfg["data"]
    cls, init = data["class_path"].rsplit(".", 1)[-1], data.get("init_args") or {}
    if cls == "GLUEDataModule":
        return backbone, init["task"], {"cola": "mcc", "stsb": "pearson"}.get(init["task"], "accuracy")
    if cls == "E2EDataModule":
        return backbone, "e2e", "BLEU"
    if cls == "CommonsenseDataModule":
        return backbone, "commonsense", "accuracy_average"
    task = {
        "test_summarize": "summarization",
        "test_classify": "classification",
        "test_coding": "coding",
        "test_closed_qa": "closed_qa",
    }.get(init.get("test_split"), "mt_bench")
    return backbone, task, "judge"


def test_every_shipped_paper_config_has_its_paper_value():
    paths = sorted(
        p for family in ("glue", "e2e", "commonsense", "instruct") for p in (CONFIGS / family).rglob("*.yaml")
    )
    assert len(paths) >= 20 + 2 + 2 + 20
    exempt = {(paper_model(e["model"]), e["task"]) for e in not_in_paper()}
    missing, seen_exempt = [], set()
    for path in paths:
        backbone, task, metric = _paper_key(path)
        if (paper_model(backbone), task) in exempt:
            seen_exempt.add((paper_model(backbone), task))
            assert lookup(backbone, task, "kasa", metric) is None  # the paper really has no column for it
            continue
        for method in ("kasa", "lora"):
            if lookup(backbone, task, method, metric) is None:
                missing.append((path.relative_to(CONFIGS).as_posix(), method))
    assert not missing, missing
    assert seen_exempt == exempt  # the exemptions are exactly the configs without a column (MNLI, QQP)
