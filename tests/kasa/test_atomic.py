"""Atomic file writes: the file appears whole or not at all, with the mode a plain ``open`` gives."""

import os
import stat

import pytest

from kasa_lightning.kasa.atomic import default_file_mode, temporary_name, write_atomically, write_bytes_atomically


def test_writes_the_bytes_with_the_umask_mode_and_leaves_no_temporary(tmp_path):
    path = write_bytes_atomically(tmp_path / "sub" / "a.bin", b"payload")
    assert path.read_bytes() == b"payload"
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode) == default_file_mode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.bin"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    path = write_bytes_atomically(tmp_path / "a.bin", b"old")

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old"
    assert not list(tmp_path.glob(f"{temporary_name(path)}*"))


def test_temporaries_of_a_killed_writer_are_cleaned_on_the_next_write(tmp_path):
    orphan = tmp_path / f"{temporary_name(tmp_path / 'a.bin')}x1.tmp"
    orphan.write_bytes(b"left by a killed process")
    write_bytes_atomically(tmp_path / "a.bin", b"new")
    assert not orphan.exists()
