"""Atomic writes: every output is written to a temporary name beside it, flushed to disk
(fsync) and renamed, and the folder's entry is flushed too, so neither a killed run nor
a power cut leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the same folder; fsync and rename it to `path` on
    success, delete it on failure. `suffix` keeps an extension that writers look at."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)  # the data is on disk before the name points at it
        os.replace(tmp_path, final)
        fsync_path(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files that writes of `name` (a glob; default: any file) left in
    `folder` when a run was killed before its rename (`atomic_path` names them
    `.NAME.<random>.tmp`). Returns what was removed."""
    removed = []
    for p in Path(folder).glob(f".{name}.*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to disk (best effort on folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a BOM is dropped), or a one-line TreeclipError naming the file
    and the reason (missing, unreadable, or the line of the first non-UTF-8 byte)."""
    from treeclip.errors import TreeclipError

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TreeclipError(f"{path}: file not found") from None
    except OSError as e:
        raise TreeclipError(f"{path}: cannot read ({e.strerror or e})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # the BOM goes first, so error offsets index `data`
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TreeclipError(f"{path}: not UTF-8 text (line {line}, byte {e.start}); save it as UTF-8") from None


def write_npy_atomic(path: str | os.PathLike, array: Any) -> None:
    """Save a numpy array as `.npy` atomically. Through a file handle: given a path,
    np.save would append ".npy" to the temporary name and the rename would move an
    empty file into place."""
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
