"""Writing prediction rows: CSV (pybioclip's columns), JSON Lines, or a terminal table.

CSV and JSON Lines outputs are resumable: rows are appended one batch at a time with a
single `write` on a file opened for appending, then fsync'ed, so a killed run leaves at
worst a last partial line, which the next run cuts off before it reads which images are
done and skips them. A table is printed (or written atomically) at the end.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from treeclip.errors import TreeclipError
from treeclip.fsutil import write_text_atomic
from treeclip.taxonomy.taxon import RANKS, rank_index

FORMATS = ("csv", "jsonl", "table")
SPECIES_EXTRA = ("species_epithet", "species", "common_name")


def tree_columns(rank: str) -> list[str]:
    """pybioclip's columns for tree-of-life predictions at `rank`, plus `error`."""
    depth = rank_index(rank) + 1
    names = list(RANKS[:min(depth, 6)]) + (list(SPECIES_EXTRA) if depth == len(RANKS) else [])
    return ["file_name", *names, "score", "error"]


def rollup_columns() -> list[str]:
    return ["file_name", "rank", *RANKS[:6], *SPECIES_EXTRA, "score", "error"]


def label_columns() -> list[str]:
    """Custom labels and bins: pybioclip's `classification` column."""
    return ["file_name", "classification", "score", "error"]


def format_score(value) -> str:
    return "" if value is None or value == "" else format(float(value), ".6g")


def _csv_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow([format_score(row.get(c)) if c == "score" else row.get(c, "") for c in columns])
    return buf.getvalue()


def _header_text(columns: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(columns)
    return buf.getvalue()


def _jsonl_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    out = []
    for row in rows:
        obj = {c: row[c] for c in columns if c in row and (c != "error" or row[c])}
        out.append(json.dumps(obj, ensure_ascii=False))
    return "".join(line + "\n" for line in out)


def table_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain aligned table (columns that every row leaves empty are dropped)."""
    cols = [c for c in columns if any(row.get(c) not in (None, "") for row in rows)] or list(columns)
    cells = [[format_score(r.get(c)) if c == "score" else str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cols), rule, *(line(r) for r in cells)]) + "\n"


class PredictionWriter:
    """Rows to `path` (or stdout when None) in `fmt`; `done` holds the file names that
    an earlier run already wrote (skip them), when resuming an existing output."""

    def __init__(self, path: str | os.PathLike | None, fmt: str, columns: Sequence[str], *,
                 resume: bool = True, stream: TextIO | None = None) -> None:
        if fmt not in FORMATS:
            raise TreeclipError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.path = Path(path) if path else None
        self.fmt, self.columns = fmt, list(columns)
        self.stream = stream or sys.stdout
        self.done: set[str] = set()
        self._table: list[dict] = []
        self.rows_written = 0
        if self.path is not None and fmt != "table":
            if resume and self.path.exists() and self.path.stat().st_size > 0:
                self.done = self._read_done()
            else:
                header = _header_text(self.columns) if fmt == "csv" else ""
                write_text_atomic(self.path, header)
        elif self.path is None and fmt == "csv":
            self.stream.write(_header_text(self.columns))

    def _read_done(self) -> set[str]:
        assert self.path is not None
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            # a partial last line from a killed run: cut it off
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise TreeclipError(f"{self.path}: existing output is not UTF-8; cannot resume it") from None
        if self.fmt == "csv":
            reader = csv.reader(io.StringIO(text))
            header = next(reader, None)
            if header != self.columns:
                raise TreeclipError(f"{self.path}: existing output has other columns ({', '.join(header or [])}); "
                                    "give another --output or remove it")
            return {row[0] for row in reader if row}
        done = set()
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    done.add(json.loads(line)["file_name"])
                except (ValueError, KeyError, TypeError):
                    raise TreeclipError(f"{self.path}: line {n} is not a prediction row; cannot resume it") from None
        return done

    def write(self, rows: Sequence[dict]) -> None:
        """One batch of rows (appended at once)."""
        if not rows:
            return
        self.rows_written += len(rows)
        if self.fmt == "table":
            self._table.extend(rows)
            return
        text = _csv_text(rows, self.columns) if self.fmt == "csv" else _jsonl_text(rows, self.columns)
        if self.path is None:
            self.stream.write(text)
            self.stream.flush()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Print or write the table (other formats are complete already)."""
        if self.fmt != "table":
            return
        text = table_text(self._table, self.columns) if self._table else ""
        if self.path is None:
            self.stream.write(text)
        else:
            write_text_atomic(self.path, text)
