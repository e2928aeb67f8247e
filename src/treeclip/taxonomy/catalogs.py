"""Catalog files for the resolver: CSV, TSV or Parquet read as a table with every CSV
column as text (other columns pass through untouched), and written back atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from treeclip.errors import TreeclipError

if TYPE_CHECKING:
    import pyarrow as pa


def _first_line(message: str, limit: int = 160) -> str:
    line = str(message).strip().splitlines()[0] if str(message).strip() else "unreadable"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _utf8_error(path: Path, chunk_size: int = 1 << 24) -> str | None:
    """Where a file stops being UTF-8 (`line 3, byte 0xe9`), or None if it is UTF-8.
    Reads in chunks, so a large catalog is not held in memory twice."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # The error offset is within this chunk plus what the decoder held back.
                held = len(err.object) - len(chunk)
                start = max(err.start - held, 0)
                line = lines + chunk.count(b"\n", 0, start)
                return f"line {line}, byte 0x{err.object[err.start]:02x}"
            if not chunk:
                return None
            lines += chunk.count(b"\n")


def csv_delimiter(path: str | Path, header: str) -> str:
    """The delimiter of a CSV: tab for `.tsv`, else whichever of `,` tab `;` its header
    line holds most of (`,` when tied or none)."""
    if Path(path).suffix.lower() == ".tsv":
        return "\t"
    counts = {d: header.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.__getitem__)  # the first of the most frequent: `,` wins ties
    return best if counts[best] else ","


def read_catalog_table(path: str | Path) -> "pa.Table":
    """Read a catalog (CSV, TSV or Parquet) with every CSV column as text.

    Raises TreeclipError with one line naming the file and the reason for a missing or
    empty file, malformed CSV, non-UTF-8 text or an unreadable Parquet file.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise TreeclipError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise TreeclipError(f"{path}: not a readable Parquet file ({_first_line(err)})") from None
    bad_utf8 = _utf8_error(path)
    if bad_utf8:
        raise TreeclipError(f"{path}: not UTF-8 text ({bad_utf8}); save it as UTF-8")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = fh.readline()
    delimiter = csv_delimiter(path, header)
    names = [n.strip().strip('"') for n in header.rstrip("\r\n").split(delimiter)]
    if not header.strip():
        raise TreeclipError(f"{path}: empty file, expected a header row")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TreeclipError(f"{path}: malformed CSV: repeated column {dupes[0]!r}")
    try:
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid as err:
        raise TreeclipError(f"{path}: malformed CSV: {_first_line(err)}") from None


def write_catalog_table(table: "pa.Table", path: str | Path) -> None:
    """Write a table as Parquet (`.parquet`, `.pq`) or CSV (`.csv`, `.tsv`), atomically:
    a failed write leaves nothing under `path`."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from treeclip.fsutil import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv"):
        raise TreeclipError(f"{path}: unknown output format {suffix or '(none)'}; use .parquet or .csv")
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix in (".parquet", ".pq"):
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(delimiter="\t" if suffix == ".tsv" else ","))
