"""Writing prediction rows: CSV (pybioclip's columns), JSON Lines, or a terminal table.

CSV and JSON Lines outputs are resumable: rows are appended one batch at a time with a
single `write` on a file opened for appending, then fsync'ed, so a killed run leaves at
worst a last partial line, which the next run cuts off before it reads which images are
done and skips them (with `retry_errors`, images whose row is an error are not done: their
rows are dropped and they are tried again). A table is printed (or written atomically)
at the end. `merge_outputs` joins the parts that torchrun ranks wrote, in input order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from treeclip.errors import TreeclipError
from treeclip.fsutil import write_text_atomic
from treeclip.predict.options import FORMATS
from treeclip.taxonomy.taxon import RANKS, rank_index

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


@dataclass
class StoredRows:
    """The rows an output already holds, in file order: each row's key (its file name, or
    `<file>#<detection_id>` for a detection's row), its text (as this writer writes it,
    newline included) and whether it is an error row."""

    names: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[bool] = field(default_factory=list)

    def without_errors(self) -> "StoredRows":
        keep = [i for i, bad in enumerate(self.errors) if not bad]
        return StoredRows([self.names[i] for i in keep], [self.texts[i] for i in keep], [False] * len(keep))


def _trim_partial_line(path: Path) -> bytes:
    """The file's bytes, a partial last line (a killed run's) cut off the file first."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    return data


def read_stored(path: Path, fmt: str, columns: Sequence[str]) -> StoredRows:
    """The rows of an existing CSV or JSON Lines output (one-line errors if unusable)."""
    try:
        text = _trim_partial_line(path).decode("utf-8")
    except UnicodeDecodeError:
        raise TreeclipError(f"{path}: existing output is not UTF-8; cannot resume it") from None
    stored = StoredRows()
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header != list(columns):
            raise TreeclipError(f"{path}: existing output has other columns ({', '.join(header or [])}); "
                                "give another --output or remove it")
        error_at = list(columns).index("error")
        for cells in (row for row in reader if row):
            stored.names.append(row_key(dict(zip(columns, cells))))
            stored.texts.append(_csv_line(cells))
            stored.errors.append(len(cells) > error_at and bool(cells[error_at]))
        return stored
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                stored.names.append(row_key(row))
            except (ValueError, KeyError, TypeError):
                raise TreeclipError(f"{path}: line {n} is not a prediction row; cannot resume it") from None
            stored.texts.append(line + "\n")
            stored.errors.append(bool(row.get("error")))
    return stored


def row_key(row: dict) -> str:
    """The key an output row resumes by: its file, or `<file>#<detection_id>` for a
    detection's row (`predict.detections`)."""
    detection = row.get("detection_id")
    return f"{row['file_name']}#{detection}" if detection not in (None, "") else row["file_name"]


def read_rows(path: Path, fmt: str) -> list[dict]:
    """Every row of a finished CSV or JSON Lines output, as dicts."""
    text = Path(path).read_text(encoding="utf-8")
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _csv_line(cells: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _append(path: Path, text: str) -> None:
    """Append `text` with one write and fsync: a kill leaves at worst a partial last line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


class PredictionWriter:
    """Rows to `path` (or stdout when None) in `fmt`; `done` holds the file names that
    an earlier run already wrote (skip them), when resuming an existing output;
    `retry_errors` leaves error rows out of `done` (and out of the file)."""

    def __init__(self, path: str | os.PathLike | None, fmt: str, columns: Sequence[str], *,
                 resume: bool = True, retry_errors: bool = False, stream: TextIO | None = None) -> None:
        if fmt not in FORMATS:
            raise TreeclipError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.path = Path(path) if path else None
        self.fmt, self.columns = fmt, list(columns)
        self.stream = stream or sys.stdout
        self.done: set[str] = set()
        self.done_errors: set[str] = set()  # the done images whose rows are errors
        self._table: list[dict] = []
        self.rows_written = 0
        if self.path is not None and fmt != "table":
            if resume and self.path.exists() and self.path.stat().st_size > 0:
                stored = read_stored(self.path, fmt, self.columns)
                if retry_errors and any(stored.errors):
                    stored = stored.without_errors()
                    self._rewrite(stored)
                self.done = set(stored.names)
                self.done_errors = {n for n, bad in zip(stored.names, stored.errors) if bad}
            else:
                self._rewrite(StoredRows())
        elif self.path is None and fmt == "csv":
            self.stream.write(_header_text(self.columns))

    def _rewrite(self, stored: StoredRows) -> None:
        assert self.path is not None
        header = _header_text(self.columns) if self.fmt == "csv" else ""
        write_text_atomic(self.path, header + "".join(stored.texts))

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
        _append(self.path, text)

    def close(self) -> None:
        """Print or write the table (other formats are complete already)."""
        if self.fmt != "table":
            return
        text = table_text(self._table, self.columns) if self._table else ""
        if self.path is None:
            self.stream.write(text)
        else:
            write_text_atomic(self.path, text)


def merge_outputs(output: Path, parts: Sequence[Path], fmt: str, columns: Sequence[str],
                  order: Sequence[str]) -> None:
    """Write `output` (atomically) from its own rows and the rank `parts`: each image's
    rows once (a part's rows, being newer, win over the output's), images in `order`,
    then any others the files hold in their stored order; the parts are removed."""
    groups: dict[str, list[str]] = {}
    for path in ([output] if output.exists() else []) + list(parts):
        stored = read_stored(path, fmt, columns)
        fresh: dict[str, list[str]] = {}
        for name, text in zip(stored.names, stored.texts):
            fresh.setdefault(name, []).append(text)
        groups.update(fresh)
    ranked = [n for n in dict.fromkeys(order) if n in groups]
    rest = [n for n in groups if n not in set(ranked)]
    header = _header_text(columns) if fmt == "csv" else ""
    write_text_atomic(output, header + "".join(t for n in ranked + rest for t in groups[n]))
    for path in parts:
        path.unlink(missing_ok=True)
