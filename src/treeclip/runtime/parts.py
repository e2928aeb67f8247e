"""Large arrays computed chunk by chunk, each chunk saved atomically as it finishes, so a
killed run resumes from the chunks it had (the label-embedding and feature caches).

A part store is a folder of `part-<first row>.npy` (the rows) and, when the caller keeps
per-row facts beside them, `part-<first row>.json`. Parts are named by their first row,
so a run with another chunk size never mistakes one for its own; a part that cannot be
read, or whose shape is not the one asked for, is treated as missing and computed again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from treeclip.fsutil import write_json_atomic, write_npy_atomic


class PartStore:
    """The parts of one array under `folder`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _paths(self, start: int) -> tuple[Path, Path]:
        stem = self.folder / f"part-{start:09d}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def load(self, start: int, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]] | None:
        """(rows, extra) of the part from row `start` when it is complete and of `shape`."""
        array_path, extra_path = self._paths(start)
        try:
            rows = np.load(array_path, allow_pickle=False)
            extra = json.loads(extra_path.read_text(encoding="utf-8")) if extra_path.exists() else {}
        except (OSError, ValueError):
            return None
        return (rows, extra) if rows.shape == tuple(shape) else None

    def save(self, start: int, rows: np.ndarray, extra: dict[str, Any] | None = None) -> None:
        """Write the part from row `start` atomically; `extra` (JSON) first, so the rows
        being there implies their facts are."""
        array_path, extra_path = self._paths(start)
        if extra is not None:
            write_json_atomic(extra_path, extra)
        write_npy_atomic(array_path, rows)

    def clear(self) -> None:
        """Remove the parts (once the whole array is saved elsewhere)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def fill_by_parts(out: np.ndarray, chunk: int, compute: Callable[[int, int], tuple[np.ndarray, dict | None]],
                  store: PartStore | None, *, restore: Callable[[int, int, dict], None] | None = None,
                  done: Callable[[int], None] | None = None) -> None:
    """Fill `out` chunk by chunk: a chunk already in `store` is read back (its extra goes
    to `restore(start, stop, extra)`), else `compute(start, stop)` returns (rows, extra)
    and the part is saved. `done(n)` is told how many rows each chunk added."""
    n = len(out)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        shape = (stop - start, *out.shape[1:])
        found = store.load(start, shape) if store is not None else None
        if found is not None:
            out[start:stop], extra = found
            if restore is not None:
                restore(start, stop, extra)
        else:
            rows, extra = compute(start, stop)
            out[start:stop] = rows
            if store is not None:
                store.save(start, out[start:stop], extra)
        if done is not None:
            done(stop - start)
