"""User tables (CSV, TSV or Parquet) as rows of text, and rows as taxa.

The one reader for every stage that takes a user's table: the builder's catalogs, an
evaluation task's catalog and taxa table, predict's taxa tables and subsets, the Rare
Species inputs. Column names are stripped and lower-cased; every value is text, stripped,
'' where missing (empty, None, NaN). A CSV's delimiter is the one of `,`, tab and `;` its
header line holds most of (`.tsv`: tab; `treeclip.taxonomy.catalogs.csv_delimiter`).

Errors are one `TreeclipError` line naming the file: not found, not UTF-8 (with the line),
empty (no header row), a row with more fields than the header (with its line), malformed
CSV, unreadable Parquet.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Mapping

from treeclip.errors import TreeclipError
from treeclip.fsutil import read_text
from treeclip.taxonomy.catalogs import csv_delimiter
from treeclip.taxonomy.names import clean_common_name, clean_epithet, clean_kingdom, clean_uninomial
from treeclip.taxonomy.taxon import COMMON_COLUMNS, RANKS, Taxon

PARQUET_SUFFIXES = (".parquet", ".pq")

__all__ = ["COMMON_COLUMNS", "PARQUET_SUFFIXES", "read_rows", "read_taxa_table", "taxon_from_row"]


def read_rows(path: str | os.PathLike, *, what: str = "table") -> list[dict[str, str]]:
    """A CSV/TSV or Parquet file as rows of lower-cased column -> text; `what` names the
    table in the error for an empty file (`catalog`, `taxa table`)."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet_rows(path)
    return _csv_rows(path, what)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def _parquet_rows(path: Path) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise TreeclipError(f"{path}: file not found") from None
    except Exception as e:  # pyarrow raises several types on a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise TreeclipError(f"{path}: unreadable Parquet ({reason})") from None
    names = [str(c).strip().lower() for c in table.column_names]
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [dict(zip(names, (_text(c[i]) for c in columns))) for i in range(table.num_rows)]


def _csv_rows(path: Path, what: str) -> list[dict[str, str]]:
    text = read_text(path)  # one-line errors for a missing or non-UTF-8 file
    if not text.strip():
        raise TreeclipError(f"{path}: empty {what} (no header row)")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=csv_delimiter(path, text.split("\n", 1)[0]))
    rows = []
    try:
        for row in reader:
            if None in row:
                raise TreeclipError(f"{path}: line {reader.line_num} has more fields than the header")
            rows.append({(k or "").strip().lower(): (v or "").strip() for k, v in row.items()})
    except csv.Error as e:
        raise TreeclipError(f"{path}: malformed CSV at line {reader.line_num} ({e})") from None
    return rows


def taxon_from_row(row: Mapping[str, str]) -> Taxon:
    """A taxon from a table row (lower-cased columns): the ranks cleaned (authors and
    markers dropped, case fixed, kingdom synonyms mapped); `species` may hold the epithet
    or `Genus epithet`, and a `species_epithet` column (pybioclip's output) wins; the
    common name is the first of `COMMON_COLUMNS` the row fills."""
    genus = clean_uninomial(row.get("genus", ""))
    epithet = row.get("species_epithet") or row.get("species", "")
    ranks = {"kingdom": clean_kingdom(row.get("kingdom", "")),
             **{r: clean_uninomial(row.get(r, "")) for r in RANKS[1:5]},
             "genus": genus, "species": clean_epithet(epithet, genus) if epithet else ""}
    common = next((row[c] for c in COMMON_COLUMNS if row.get(c)), "")
    return Taxon.from_ranks(ranks, clean_common_name(common))


def read_taxa_table(path: str | os.PathLike) -> list[Taxon]:
    """The distinct taxa of a CSV/Parquet table with rank columns, in file order."""
    rows = read_rows(path, what="taxa table")
    if rows and not any(r in rows[0] for r in RANKS):
        raise TreeclipError(f"{path}: no rank columns (need some of {', '.join(RANKS)})")
    taxa = list(dict.fromkeys(t for t in map(taxon_from_row, rows) if not t.is_empty))
    if not taxa:
        raise TreeclipError(f"{path}: no taxa in the table")
    return taxa
