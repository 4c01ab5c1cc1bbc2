"""A data file that is not valid UTF-8 is named by file and line, as other data errors are (Python's own error
gives a byte offset into the file: "can't decode byte 0xe9 in position 97")."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from lightning_helpers import MINILM

from kasa_lightning.datamodules import CommonsenseDataModule, DataFileError, InstructionDataModule
from kasa_lightning.datamodules.e2e import read_e2e_csv
from kasa_lightning.datamodules.glue import read_glue_tsv

LATIN1 = "caf\u00e9".encode("latin-1")  # b"caf\xe9": the 0xe9 byte alone is not UTF-8


def _last_line(err: BaseException) -> str:
    return "".join(traceback.format_exception(err)).rstrip().splitlines()[-1]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_glue_tsv(tmp_path):
    path = _write(
        tmp_path / "train.tsv",
        [b"index\tsentence1\tsentence2\tlabel", b"0\ta\tb\tentailment", b"1\t" + LATIN1 + b"\tb\tentailment"],
    )
    with pytest.raises(DataFileError) as info:
        read_glue_tsv(path, "rte")
    assert f"{path}:3: not valid UTF-8 (byte 0xe9 at column 6)" in _last_line(info.value)


def test_e2e_csv(tmp_path):
    path = _write(tmp_path / "train.csv", [b"mr,ref", b'"name[A]","A is good."', b'"name[B]","' + LATIN1 + b'"'])
    with pytest.raises(DataFileError) as info:
        read_e2e_csv(path)
    assert f"{path}:3: not valid UTF-8 (byte 0xe9 at column 15)" in _last_line(info.value)


@pytest.mark.parametrize("kind", ["commonsense", "instruct"])
def test_json_lines_loaders(tmp_path, kind):
    good = b'{"instruction": "q1", "input": "", "output": "the correct answer is true", "answer": "true"}'
    path = _write(
        tmp_path / "train.jsonl", [good, good, b'{"instruction": "' + LATIN1 + b'", "output": "a", "answer": "true"}']
    )
    common = {"train_path": str(path), "tokenizer": MINILM, "max_length": 64, "cache_dir": str(tmp_path / "cache")}
    if kind == "commonsense":
        data = CommonsenseDataModule(val_size=0, **common)
    else:
        data = InstructionDataModule(source="alpaca", **common)
    with pytest.raises(DataFileError) as info:
        data.setup("fit")
    last = _last_line(info.value)
    assert f"data.train_path: {path}:3: not valid UTF-8 (byte 0xe9 at column 21)" in last, last
