"""Atomic writes and the shared UTF-8 reader."""

from __future__ import annotations

import numpy as np
import pytest

from treeclip.errors import TreeclipError
from treeclip.fsutil import read_text, write_npy_atomic


def test_npy_lands_under_its_own_name_with_no_stray_files(tmp_path):
    target = tmp_path / "emb.npy"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_npy_atomic(target, array)
    assert np.array_equal(np.load(target), array)
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npy"]


def test_read_text_names_the_file_and_the_line_of_a_bad_byte(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbfname\nok\n\xe9t\xe9\n")
    with pytest.raises(TreeclipError, match=r"labels.csv: not UTF-8 text \(line 3"):
        read_text(path)
    path.write_bytes(b"\xef\xbb\xbfname\nok\n")
    assert read_text(path) == "name\nok\n"
    with pytest.raises(TreeclipError, match="missing.csv: file not found"):
        read_text(tmp_path / "missing.csv")


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The temporary file is fsynced before it is renamed into place, then its folder."""
    import os

    from treeclip import fsutil

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(f"fsync:{os.readlink(f'/proc/self/fd/{fd}')}"),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace:{b}"), real_replace(a, b))[1])
    fsutil.write_text_atomic(tmp_path / "out.txt", "hello\n")
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    kinds = [e.split(":", 1)[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert ".out.txt." in events[0] and events[2] == f"fsync:{tmp_path}"
