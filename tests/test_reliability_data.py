"""Reliability, data side: nothing skipped without a count, data errors on the last traceback line, evaluation without
the training file, NIST's brevity penalty on short outputs, finite AdapterConfig floats (items 5, 6, 14, 15, 18),
and the same two classes of data bug in the commonsense and instruction loaders.

Over 400 lines because it holds one test per data guarantee with their hand-computed
values; split by theme it would repeat the file fixtures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA
from lightning_helpers import MINILM, TINY_BERT, trainer

from kasa_lightning import AdapterConfig, KaSAModule
from kasa_lightning.datamodules import (
    CommonsenseDataModule,
    DataFileError,
    E2EDataModule,
    GLUEDataModule,
    InstructionDataModule,
)
from kasa_lightning.metrics.e2e import e2e_scores, mteval_tokenize

HERE = Path(__file__).resolve().parent
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def _last_line(err: BaseException) -> str:
    """The last line of the traceback Python prints for ``err`` (what a user reads first)."""
    return "".join(traceback.format_exception(err)).rstrip().splitlines()[-1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _rte_rows(n: int) -> str:
    labels = ("entailment", "not_entailment")
    return "".join(f"{i}\ta man plays chess number {i}\ta man plays\t{labels[i % 2]}\n" for i in range(n))


# ------------------------------------------------------------------------------------------ item 5: E2E skips
def test_e2e_empty_references_are_counted_and_logged(tmp_path, caplog):
    path = tmp_path / "e2e.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["mr", "ref"])
        out.writerow(["name[Alimentum], food[Thai]", "Alimentum serves Thai food."])  # line 2
        out.writerow(["name[Alimentum], food[Thai]", ""])  # line 3: empty
        out.writerow(["name[Bibimbap House], area[riverside]", "   "])  # line 4: blank, and the MR's only one
        out.writerow(["name[Cotto], eatType[pub]", 'Cotto is a pub, "the" place.'])  # line 5
    dm = E2EDataModule(train_path=str(path), val_path=str(path), test_path=None, tokenizer=MINILM)
    with caplog.at_level(logging.WARNING, logger="kasa_lightning.datamodules.e2e"):
        pairs = dm.load_pairs("train")
    assert pairs == [
        ("name[Alimentum], food[Thai]", "Alimentum serves Thai food."),
        ("name[Cotto], eatType[pub]", 'Cotto is a pub, "the" place.'),
    ]
    assert dm.stats["empty_reference"] == 2
    assert dm.split_stats["train"] == {"rows": 4, "empty_reference": 2, "mr_without_reference": 1}
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 2 reference(s) that are empty" in warning and "[3, 4]" in warning and str(path) in warning
    assert "1 MR(s) have no reference left" in warning
    # evaluation: the MR without a reference is not scored, and that is counted too
    rows = dm._eval_rows(dm.load_pairs("val"))
    assert [r["meta"]["mr"] for r in rows] == ["name[Alimentum], food[Thai]", "name[Cotto], eatType[pub]"]
    assert dm.stats["empty_reference"] == 4 and dm.split_stats["val"]["mr_without_reference"] == 1


def test_e2e_csv_rows_pandas_would_misread_are_errors_with_the_line(tmp_path):
    # an unquoted MR in the first row: pandas made the leading fields an index and kept the last two as mr, ref
    first = _write(tmp_path / "first.csv", "mr,ref\nname[B], food[Thai],B serves Thai.\n")
    with pytest.raises(DataFileError, match=re.escape(f"{first}:2: 3 fields, but the header ['mr', 'ref'] has 2")):
        E2EDataModule(train_path=str(first), tokenizer=MINILM).load_pairs("train")
    # the same in a later row: pandas raised, buried under DatasetGenerationError
    extra = _write(tmp_path / "extra.csv", 'mr,ref\n"name[A]","A is nice."\nname[B], food[Thai],B serves Thai.\n')
    with pytest.raises(DataFileError, match=re.escape(f"{extra}:3: 3 fields, but the header ['mr', 'ref'] has 2")):
        E2EDataModule(train_path=str(extra), tokenizer=MINILM).load_pairs("train")
    # an unclosed quote: pandas swallowed the next rows into one field
    quote = _write(tmp_path / "quote.csv", 'mr,ref\n"name[A]","A is nice\n"name[B]","B is nice."\n')
    with pytest.raises(DataFileError, match=re.escape(f"{quote}:2: not valid CSV")):
        E2EDataModule(train_path=str(quote), tokenizer=MINILM).load_pairs("train")
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(DataFileError, match=re.escape(f"{empty} is empty")):
        E2EDataModule(train_path=str(empty), tokenizer=MINILM).load_pairs("train")


@pytest.mark.skipif(not (SHARED_DATA / "e2e").is_dir(), reason="../shared/data/e2e is absent")
def test_e2e_real_files_read_as_before():
    # the official files hold no empty reference: every row becomes a pair (counts as the README table says)
    for name, rows in (("devset.csv", 4672), ("testset_w_refs.csv", 4693)):
        dm = E2EDataModule(train_path=str(SHARED_DATA / "e2e" / name), tokenizer=MINILM)
        pairs = dm.load_pairs("train")
        assert len(pairs) == rows and dm.stats["empty_reference"] == 0
        with (SHARED_DATA / "e2e" / name).open(encoding="utf-8", newline="") as handle:
            assert pairs == [(r["mr"], r["ref"]) for r in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------------ item 6: NIST
BETA = math.log(2) / math.log(1.5) ** 2  # mteval: penalty exp(-BETA * ln(ratio)^2) is 0.5 at ratio 2/3


def test_nist_brevity_penalty_is_one_half_at_two_thirds_of_the_reference_length():
    # refs "a b c d", "a b" (6 words, 2 reference sets): average reference length 6 / 2 = 3; hyp "a b": 2 words
    # info(a) = info(b) = log2(6 words / 2 occurrences) = log2 3;
    # info(a b) = log2(count(a) / count(a b)) = log2(2/2) = 0
    # raw NIST = (log2 3 + log2 3) / 2 unigrams + 0 / 1 bigram = log2 3 = 1.58496...
    # ratio 2 / 3 -> penalty exp(-BETA * ln(2/3)^2) = exp(-ln 2) = 0.5  -> NIST = log2(3) / 2 = 0.79248...
    got = e2e_scores(["a b"], [["a b c d", "a b"]], metrics=("NIST",))["NIST"]
    assert got == pytest.approx(math.log2(3) / 2, abs=1e-12)


def test_nist_of_a_name_only_output_is_penalised():
    # the case: an output that holds only the restaurant's name
    # refs "The Eagle is a pub near the river ." (9 tokens), "The Eagle is cheap ." (5): 14 words, 2 sets -> L_ref 7
    # hyp "The Eagle": 2 words -> ratio 2/7; counts: the 3, eagle 2, "the eagle" 2
    # info(the) = log2(14/3), info(eagle) = log2(14/2) = log2 7, info(the eagle) = log2(count(the) / 2) = log2 1.5
    # raw = (log2(14/3) + log2 7) / 2 unigrams + log2(1.5) / 1 bigram = (2.22239 + 2.80735) / 2 + 0.58496 = 3.09984
    # penalty = exp(-BETA * ln(2/7)^2) = exp(-4.21617 * 1.56942) = exp(-6.61693) = 1.33754e-3 -> NIST = 4.14614e-3
    # (without the penalty it would be 3.1; the issue saw over 7 on real text)
    raw = (math.log2(14 / 3) + math.log2(7)) / 2 + math.log2(1.5)
    expected = raw * math.exp(-BETA * math.log(2 / 7) ** 2)
    assert expected == pytest.approx(4.14614e-3, rel=1e-5)
    got = e2e_scores(["The Eagle"], [["The Eagle is a pub near the river.", "The Eagle is cheap."]], metrics=("NIST",))[
        "NIST"
    ]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.skipif(not (SHARED_DATA / "e2e").is_dir(), reason="../shared/data/e2e is absent")
def test_nist_of_names_only_on_the_real_test_set_is_far_below_a_real_system():
    groups: dict[str, list[str]] = {}
    with (SHARED_DATA / "e2e" / "testset_w_refs.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(row["mr"], []).append(row["ref"])
    names = [re.search(r"name\[([^\]]*)\]", mr).group(1) for mr in groups]
    refs = list(groups.values())
    hyp_words = sum(len(mteval_tokenize(n)) for n in names)
    ref_words = sum(len(mteval_tokenize(r)) for rs in refs for r in rs)
    ratio = hyp_words / (ref_words / max(len(rs) for rs in refs))  # mteval: padded reference sets
    assert ratio < 2 / 3  # shorter than 2/3 of the average reference: the penalty is below one half
    assert e2e_scores(names, refs, metrics=("NIST",))["NIST"] < 1.0  # a real system scores about 8.9


def test_nist_equals_nltk_on_single_reference_corpora_with_short_outputs():
    # nltk's corpus_nist has the same information weights and length penalty (Doddington 2002) and, with one
    # reference per segment, the same reference length: an independent implementation to compare with
    nist_score = pytest.importorskip("nltk.translate.nist_score")
    words = [
        "the",
        "eagle",
        "is",
        "a",
        "cheap",
        "pub",
        "near",
        "the",
        "river",
        "with",
        "a",
        "view",
        "of",
        "the",
        "city",
        "centre",
        "and",
        "serves",
        "food",
    ]
    refs, hyps = [], []
    for i in range(30):  # references of 12 words; hypotheses of 5..12 words (ratios 0.42 .. 1)
        ref = [words[(i * 7 + j * 3) % len(words)] for j in range(12)]
        refs.append([" ".join(ref)])
        hyps.append(" ".join(ref[: 5 + i % 8]))
    ours = e2e_scores(hyps, refs, metrics=("NIST",))["NIST"]
    theirs = nist_score.corpus_nist(
        [[mteval_tokenize(r) for r in rs] for rs in refs], [mteval_tokenize(h) for h in hyps]
    )
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours < nist_score.corpus_nist(
        [[mteval_tokenize(r) for r in rs] for rs in refs], [mteval_tokenize(r[0]) for r in refs]
    )


# ------------------------------------------------------------------------------------------ item 14: data errors
def test_glue_bad_row_is_the_last_line_of_the_traceback(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", RTE_HEADER + _rte_rows(9) + "9\tonly one sentence\n")  # line 11
    _write(tmp_path / "RTE" / "dev.tsv", RTE_HEADER + _rte_rows(4))
    dm = GLUEDataModule(task="rte", data_dir=str(tmp_path), tokenizer=MINILM)
    with pytest.raises(DataFileError) as info:
        dm.setup("fit")
    assert _last_line(info.value) == (
        f"kasa_lightning.datamodules.errors.DataFileError: {tmp_path}/RTE/train.tsv:11: "
        "2 fields, too few for GLUE task 'rte'"
    )


def test_glue_empty_file_says_it_is_empty(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", "")
    _write(tmp_path / "RTE" / "dev.tsv", RTE_HEADER + _rte_rows(4))
    dm = GLUEDataModule(task="rte", data_dir=str(tmp_path), tokenizer=MINILM)
    with pytest.raises(DataFileError, match=re.escape(f"{tmp_path}/RTE/train.tsv is empty")) as info:
        dm.setup("fit")
    assert "copy the complete file again" in _last_line(info.value)


def _glue_config(tmp_path: Path, data_dir: Path) -> Path:
    config = {
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        "model": {
            "class_path": "kasa_lightning.KaSAModule",
            "init_args": {"backbone": MINILM, "backbone_config": TINY_BERT, "adapter": {"r": 2}},
        },
        "data": {
            "class_path": "kasa_lightning.datamodules.GLUEDataModule",
            "init_args": {"task": "rte", "data_dir": str(data_dir), "batch_size": 4, "max_length": 32},
        },
    }
    path = tmp_path / "glue.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# Runs the CLI and reports every file opened whose name ends in train.tsv (Python's audit hook "open").
_WATCHED_CLI = """
import sys
opened = []
sys.addaudithook(lambda event, args: event == "open" and str(args[0]).endswith("train.tsv") and opened.append(args[0]))
import atexit
atexit.register(lambda: print("OPENED", opened, flush=True))
from kasa_lightning.cli import main
sys.argv = ["kasa_lightning", *sys.argv[1:]]
main()
"""


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
    }
    return subprocess.run(
        [sys.executable, "-c", _WATCHED_CLI, *args],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (RTE_HEADER + _rte_rows(9) + "9\tonly one sentence\n", "train.tsv:11: 2 fields, too few for GLUE task 'rte'"),
        ("", "train.tsv is empty: a GLUE 'rte' TSV file holds a header line"),
    ],
    ids=["bad-row", "empty-file"],
)
def test_cli_fit_ends_with_the_data_error(tmp_path, content, message):
    data = tmp_path / "glue"
    _write(data / "RTE" / "train.tsv", content)
    _write(data / "RTE" / "dev.tsv", RTE_HEADER + _rte_rows(4))
    proc = _cli(tmp_path, "fit", "--config", str(_glue_config(tmp_path, data)))
    assert proc.returncode != 0
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("kasa_lightning.datamodules.errors.DataFileError: ") and message in last, proc.stderr[-3000:]
    assert "DatasetGenerationError" not in proc.stderr and "IndexError" not in proc.stderr


# ------------------------------------------------------------------------------------------ item 15: dev.tsv only
def test_glue_validate_needs_only_dev_tsv(tmp_path):
    _write(tmp_path / "RTE" / "dev.tsv", RTE_HEADER + _rte_rows(8))
    dm = GLUEDataModule(task="rte", data_dir=str(tmp_path), tokenizer=MINILM, batch_size=4, max_length=32)
    module = KaSAModule(backbone=MINILM, backbone_config=TINY_BERT, num_labels=2, adapter=AdapterConfig(r=2))
    result = trainer(tmp_path / "run").validate(module, dm)
    assert 0.0 <= result[0]["val/accuracy"] <= 1.0
    assert dm.train_set is None and len(dm.val_set) == 8  # the training split was neither read nor tokenised
    # fit afterwards still needs (and says it needs) the training file
    with pytest.raises(FileNotFoundError, match="train.tsv does not exist"):
        dm.setup("fit")


def test_cli_validate_never_opens_train_tsv(tmp_path):
    data = tmp_path / "glue"
    _write(data / "RTE" / "dev.tsv", RTE_HEADER + _rte_rows(8))
    proc = _cli(tmp_path, "validate", "--config", str(_glue_config(tmp_path, data)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/accuracy" in proc.stdout
    assert "OPENED []" in proc.stdout


# ------------------------------------------------------------------------------------------ item 18: finite floats
FLOAT_FIELDS = [f.name for f in dataclasses.fields(AdapterConfig) if "float" in str(f.type)]


def test_the_float_settings_are_the_known_ones():
    assert FLOAT_FIELDS == ["alpha", "dropout", "beta", "gamma", "init_std"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("setting", FLOAT_FIELDS)
def test_adapter_config_rejects_non_finite_floats(setting, value):
    with pytest.raises(ValueError, match=rf"AdapterConfig\.{setting}={value!r} is invalid: give a finite number"):
        AdapterConfig(**{setting: value})


def test_adapter_config_still_takes_finite_numbers():
    cfg = AdapterConfig(alpha=16, dropout=0.1, beta=0, gamma=1e-3, init_std=0.5)
    assert (cfg.alpha, cfg.dropout, cfg.beta, cfg.gamma, cfg.init_std) == (16, 0.1, 0.0, 1e-3, 0.5)


# ------------------------------------------------------------------------------------------ commonsense, instruct
BAD_JSON = '[{"instruction": "q1", "output": "a1", "answer": "true"},\n {"instruction": oops}]\n'
BAD_JSONL = '{"instruction": "q1", "output": "a1", "answer": "true"}\n{"instruction": oops}\n'


def _commonsense(path: Path, **kwargs) -> CommonsenseDataModule:
    return CommonsenseDataModule(
        train_path=str(path),
        val_size=0,
        tokenizer=MINILM,
        max_length=64,
        cache_dir=str(path.parent / "cache"),
        **kwargs,
    )


def _instruct(path: Path) -> InstructionDataModule:
    return InstructionDataModule(
        source="alpaca", train_path=str(path), tokenizer=MINILM, max_length=64, cache_dir=str(path.parent / "cache")
    )


@pytest.mark.parametrize("make", [_commonsense, _instruct], ids=["commonsense", "instruct"])
@pytest.mark.parametrize(
    "name, text, message",
    [
        ("train.json", BAD_JSON, "train.json:2: not valid JSON (Expecting value, column 18)"),
        ("train.jsonl", BAD_JSONL, "train.jsonl:2: not valid JSON lines (Expecting value, column 17)"),
        ("train.json", "", "train.json is empty"),
    ],
    ids=["json", "jsonl", "empty"],
)
def test_json_loaders_end_with_the_file_and_line(tmp_path, make, name, text, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(DataFileError) as info:
        make(path).setup("fit")
    last = _last_line(info.value)
    assert last.startswith("kasa_lightning.datamodules.errors.DataFileError: data.train_path: ") and message in last


def test_commonsense_rows_without_output_are_counted_not_crashing(tmp_path):
    rows = [
        {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"},
        {"instruction": "Is fire cold?", "input": "", "output": None, "answer": "false"},
        {"instruction": "Is ice hot?", "input": "", "output": "  ", "answer": "false"},
        {"instruction": "Is snow white?", "input": "", "output": "the correct answer is true", "answer": "true"},
    ]
    path = _write(tmp_path / "train.json", json.dumps(rows))
    dm = _commonsense(path)
    with pytest.warns(
        UserWarning, match=re.escape("skipped 2 row(s) without an output (nothing to learn): rows [1, 2]")
    ):
        dm.setup("fit")
    assert len(dm.train_set) == 2 and dm.stats == {"truncated": 0, "dropped": 0, "no_output": 2}


def test_commonsense_test_row_without_answer_is_an_error(tmp_path):
    rows = [
        {"instruction": "Is the sky blue?", "input": "", "output": "x", "answer": "true"},
        {"instruction": "Is fire cold?", "input": "", "output": "x", "answer": None},
    ]
    _write(tmp_path / "boolq" / "test.json", json.dumps(rows))
    dm = CommonsenseDataModule(
        train_path=str(tmp_path),
        test_dir=str(tmp_path),
        test_sets=["boolq"],
        val_size=0,
        tokenizer=MINILM,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataFileError, match=re.escape("test/boolq split, row 1: no answer")):
        dm.setup("test")  # before: scored against the string 'None', always wrong, silently


def test_instruct_blank_alpaca_output_is_counted_as_no_assistant(tmp_path, caplog):
    rows = [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say nothing", "input": "", "output": ""},
    ]
    path = _write(tmp_path / "train.json", json.dumps(rows))
    dm = _instruct(path)
    with caplog.at_level(logging.WARNING, logger="kasa_lightning.datamodules.instruct"):
        dm.setup("fit")
    assert len(dm.train_set) == 1 and dm.stats["no_assistant"] == 1
    assert "skipped 1 row(s) without an assistant turn" in caplog.text


def test_instruct_bad_previous_answers_line_names_file_and_line(tmp_path):
    questions = _write(
        tmp_path / "question.jsonl",
        json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]}) + "\n",
    )
    answers = _write(
        tmp_path / "turn1.jsonl",
        json.dumps({"question_id": 80, "choices": [{"index": 0, "turns": ["ok"]}]})
        + "\n"
        + '{"question_id": 81, "choi\n',
    )
    dm = InstructionDataModule(
        source="mt_bench",
        test_path=str(questions),
        mt_bench_turn=2,
        previous_answers=str(answers),
        tokenizer=MINILM,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ValueError) as info:  # before: a bare JSONDecodeError naming neither file nor line
        dm.setup("predict")
    assert f"{answers}:2: not a JSON line" in _last_line(info.value)
