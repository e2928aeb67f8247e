"""Label sets: which taxa or labels a classifier chooses among.

- Taxa tables for tree-of-life mode: the `taxa.parquet` shipped in a model or dataset dir,
  a user's CSV/Parquet (columns kingdom..species, common or common_name; the species
  column may hold the epithet or the binomial), or `ncbi:CLADE` (species of a clade from
  the offline NCBI taxonomy).
- Subsets (`class=Insecta`, a species list file) and custom labels (`--cls`, bins).

Their text embeddings and the cache are `treeclip.runtime.labels`.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from treeclip.errors import TreeclipError
from treeclip.fsutil import read_text
from treeclip.runtime.taxa_columns import TaxaColumns
from treeclip.taxonomy.taxon import RANKS, Taxon

from treeclip.data.tables import COMMON_COLUMNS, read_rows, read_taxa_table, taxon_from_row  # noqa: F401  (re-exported)
DEFAULT_TEXT_TYPE = "taxon_com"
"""BioCLIP's tree-of-life labels: the 7 ranks plus the common name."""


def load_taxa(spec: str | None, model_spec: str | None = None, *, limit: int | None = None) -> list[Taxon]:
    """The label taxa of tree-of-life mode.

    `spec`: a CSV/Parquet file, a dataset or model dir holding `taxa.parquet`, or
    `ncbi:CLADE` (species under CLADE in the offline NCBI taxonomy, at most `limit`).
    Without `spec`, the model dir's own `taxa.parquet` (written at training time)."""
    if spec and spec.startswith("ncbi:"):
        from treeclip.taxonomy.ncbi import default_reference

        clade = spec[len("ncbi:"):].strip()
        taxa = list(default_reference().species_in(clade, limit=limit))
        if not taxa:
            raise TreeclipError(f"{spec}: NCBI has no species with clean names under {clade}")
        return taxa
    if spec is None:
        if not model_spec:
            raise TreeclipError("no taxa table: give taxa (a CSV/Parquet file, a dir with taxa.parquet "
                                "or ncbi:CLADE), or load the model from a dir that has taxa.parquet")
        base = Path(model_spec.removeprefix("local-dir:"))
        found = (base if base.is_dir() else base.parent) / "taxa.parquet"
        if not found.is_file():
            raise TreeclipError(f"{model_spec}: the model has no taxa.parquet; give a taxa table "
                                "with --taxa FILE (CSV/Parquet) or --taxa ncbi:CLADE")
        return read_taxa_table(found)
    path = Path(spec)
    if path.is_dir():
        if not (path / "taxa.parquet").is_file():
            raise TreeclipError(f"{spec}: folder has no taxa.parquet")
        path = path / "taxa.parquet"
    return read_taxa_table(path)


# -- subsets -----------------------------------------------------------------------------
def _column(rank: str) -> str:
    """The column of a rank or common-name column name."""
    return "common" if rank in COMMON_COLUMNS else rank


def _match_column(columns: TaxaColumns, column: str, wanted: set[str],
                  where: np.ndarray | None = None) -> tuple[np.ndarray, set[str]]:
    """Taxa whose lower-cased `column` name is in `wanted` (and `where`), and the wanted
    names some such taxon has."""
    per_taxon, index = columns.lower_codes(column)
    hits = {index[w]: w for w in wanted if w and w in index}
    mask = np.isin(per_taxon, list(hits)) if hits else np.zeros(len(columns), dtype=bool)
    if where is not None:
        mask &= where
    return mask, {hits[c] for c in np.unique(per_taxon[mask]).tolist()}


def _match_binomials(columns: TaxaColumns, wanted: set[str]) -> tuple[np.ndarray, set[str]]:
    """Taxa whose lower-cased `genus epithet` is in `wanted`, and the names found."""
    genus, genera = columns.lower_codes("genus")
    epithet, epithets = columns.lower_codes("species")
    pairs = {}
    for w in wanted:
        g, space, e = w.partition(" ")
        if space and g and e and g in genera and e in epithets:
            pairs[genera[g] * len(epithets) + epithets[e]] = w
    if not pairs:
        return np.zeros(len(columns), dtype=bool), set()
    keys = genus.astype(np.int64) * len(epithets) + epithet
    mask = np.isin(keys, list(pairs))
    return mask, {pairs[k] for k in np.unique(keys[mask]).tolist()}


def _match_rank(columns: TaxaColumns, rank: str, names: list[str]) -> tuple[np.ndarray, set[str]]:
    """`RANK=NAMES`: a species answers to its epithet or its binomial."""
    wanted = {n.lower() for n in names}
    mask, found = _match_column(columns, _column(rank), wanted)
    if rank == "species":
        more, also = _match_binomials(columns, wanted)
        mask, found = mask | more, found | also
    return mask, found


def _match_names(columns: TaxaColumns, names: list[str]) -> tuple[np.ndarray, set[str]]:
    """A bare name matches the scientific name, the common name or any rank's name."""
    wanted = {n.lower() for n in names}
    mask, found = _match_binomials(columns, wanted)
    for column in (*RANKS[:-1], "common"):
        more, also = _match_column(columns, column, wanted)
        mask, found = mask | more, found | also
    if columns.names["genus"][:1] == [""]:  # without a genus, the scientific name is the epithet
        more, also = _match_column(columns, "species", wanted, where=columns.codes["genus"] == 0)
        mask, found = mask | more, found | also
    return mask, found


def _row_key(row: dict[str, str], columns: tuple[str, ...]) -> tuple[str, ...]:
    # a binomial in the species column names its genus too
    values = {c: row[c].strip().lower() for c in columns}
    if "species" in values and " " in values["species"]:
        genus, _, epithet = values["species"].partition(" ")
        values["species"] = epithet.strip()
        values.setdefault("genus", genus)
    return tuple(sorted(values.items()))


def _match_rows(columns: TaxaColumns, rows: list[dict[str, str]]) -> np.ndarray:
    """Taxa matching some row of a rank-header table on all of the row's non-empty cells."""
    wanted: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for row in rows:
        cells = tuple(c for c in (*RANKS, *COMMON_COLUMNS) if row.get(c, "").strip())
        if cells:
            key = _row_key(row, cells)
            wanted.setdefault(tuple(k for k, _ in key), set()).add(tuple(v for _, v in key))
    keep = np.zeros(len(columns), dtype=bool)
    for cells, values in wanted.items():
        keep |= _match_tuples(columns, cells, list(values))
    return keep


def _match_tuples(columns: TaxaColumns, cells: tuple[str, ...], values: list[tuple[str, ...]]) -> np.ndarray:
    """Taxa whose lower-cased names in `cells` equal one of the `values` tuples: both sides
    become one int64 key per row, refactorised after each cell so keys stay small."""
    n = len(columns)
    taxa_key, want_key = np.zeros(n, np.int64), np.zeros(len(values), np.int64)
    known = np.ones(len(values), dtype=bool)
    for j, cell in enumerate(cells):
        per_taxon, index = columns.lower_codes(_column(cell))
        codes = np.array([index.get(v[j], -1) for v in values], dtype=np.int64)
        known &= codes >= 0
        taxa_key = taxa_key * len(index) + per_taxon
        want_key = want_key * len(index) + np.maximum(codes, 0)
        _, inverse = np.unique(np.concatenate([taxa_key, want_key]), return_inverse=True)
        taxa_key, want_key = inverse[:n], inverse[n:]
    return np.isin(taxa_key, want_key[known])


def subset_mask(taxa: Sequence[Taxon] | TaxaColumns, spec: str) -> np.ndarray:
    """Which taxa a `--subset` spec keeps, vectorised over the taxa's columns (fast for the
    ~867k taxa of a published label set and for long lists).

    - `RANK=NAME[,NAME...]`, e.g. `class=Insecta` or `order=Lepidoptera,Coleoptera`;
    - a CSV/Parquet file whose header names ranks (pybioclip style, e.g. a `family`
      column; a row matches when all its non-empty rank cells match);
    - a text file, one name per line: scientific names (`Pica hudsonia`), common names
      or names at any rank (`Corvidae`)."""
    columns = taxa if isinstance(taxa, TaxaColumns) else TaxaColumns.from_taxa(list(taxa))
    rank, sep, values = spec.partition("=")
    rank = rank.strip().lower()
    if sep and (rank in RANKS or rank in COMMON_COLUMNS) and not Path(spec).exists():
        names = [v.strip() for v in next(csv.reader([values]), []) if v.strip()]
        if not names:
            raise TreeclipError(f"--subset {spec}: no names after '='")
        keep = _report_missing(spec, names, *_match_rank(columns, rank, names))
    else:
        path = Path(spec)
        if not path.is_file():
            raise TreeclipError(f"--subset {spec}: neither RANK=NAME (rank one of {', '.join(RANKS)}) nor a file")
        if path.suffix.lower() in (".parquet", ".pq") or _has_rank_header(path):
            keep = _match_rows(columns, read_rows(path))
        else:
            names = [ln.strip() for ln in read_text(path).splitlines() if ln.strip() and not ln.startswith("#")]
            keep = _report_missing(spec, names, *_match_names(columns, names))
    if not keep.any():
        raise TreeclipError(f"--subset {spec}: matches none of the {len(columns)} label taxa")
    return keep


def _has_rank_header(path: Path) -> bool:
    """Whether a text file's first line is a CSV header naming a rank."""
    first = read_text(path).split("\n", 1)[0].lower().replace('"', "")
    return any(h.strip() in RANKS for h in first.split(","))


def _report_missing(spec: str, names: list[str], keep: np.ndarray, found: set[str]) -> np.ndarray:
    """`keep`, after one stderr line listing the names that matched no label taxon."""
    missing = [n for n in names if n.lower() not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        print(f"treeclip: --subset {spec}: no label taxa for {shown}", file=sys.stderr)
    return keep


# -- custom labels and bins ----------------------------------------------------------------
def parse_labels(spec: str) -> list[str]:
    """`--cls`: a file (one label per line; a .csv file: its first column, header
    `label`/`cls`/`classification` skipped) or a comma list in CSV quoting, so a label with
    a comma is written `"Pica pica, magpie",crow`."""
    path = Path(spec)
    if path.is_file():
        text = read_text(path)
        if path.suffix.lower() == ".csv":
            rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].strip()]
            if rows and rows[0][0].strip().lower() in ("label", "cls", "classification", "class", "name"):
                rows = rows[1:]
            labels = [r[0].strip() for r in rows]
        else:
            labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
    else:
        try:
            labels = [v.strip() for v in next(csv.reader([spec], skipinitialspace=True), []) if v.strip()]
        except csv.Error as e:
            raise TreeclipError(f"--cls {spec!r}: malformed list ({e})") from None
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise TreeclipError(f"--cls {spec!r}: no labels")
    return labels


def parse_bins(path: str | os.PathLike) -> dict[str, str]:
    """`--bins`: a CSV whose first column is the label and second the bin (pybioclip's
    layout; the header row names them and is skipped)."""
    path = Path(path)
    rows = [r for r in csv.reader(io.StringIO(read_text(path))) if r and any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise TreeclipError(f"{path}: a bins CSV needs a header and rows of label,bin")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise TreeclipError(f"{path}: line {line}: need a label and a bin")
        label, b = row[0].strip(), row[1].strip()
        if mapping.get(label, b) != b:
            raise TreeclipError(f"{path}: line {line}: {label!r} is in two bins ({mapping[label]!r}, {b!r})")
        mapping[label] = b
    return mapping


def taxon_texts(taxa: Iterable[Taxon], text_type: str = DEFAULT_TEXT_TYPE) -> list[str]:
    """The names that fill the templates for tree-of-life labels."""
    return [t.name(text_type) for t in taxa]
