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
def _rank_keys(taxon: Taxon, rank: str) -> set[str]:
    """The lower-cased names a taxon answers to at `rank` (species: epithet or binomial)."""
    if rank == "species":
        return {taxon.species, f"{taxon.genus} {taxon.species}".lower()} if taxon.species else set()
    if rank in COMMON_COLUMNS:
        return {taxon.common.lower()} if taxon.common else set()
    return {taxon[rank].lower()} if taxon[rank] else set()


def _name_keys(taxon: Taxon) -> set[str]:
    """A bare name matches the scientific name, the common name or any rank's name."""
    keys = {n.lower() for n in taxon.lineage[:-1] if n} | {taxon.scientific_name.lower()}
    return keys | ({taxon.common.lower()} if taxon.common else set())


def _row_key(row: dict[str, str], columns: tuple[str, ...]) -> tuple[str, ...]:
    # a binomial in the species column names its genus too
    values = {c: row[c].strip().lower() for c in columns}
    if "species" in values and " " in values["species"]:
        genus, _, epithet = values["species"].partition(" ")
        values["species"] = epithet.strip()
        values.setdefault("genus", genus)
    return tuple(sorted(values.items()))


def _taxon_key(taxon: Taxon, columns: tuple[str, ...]) -> tuple[str, ...]:
    values = {c: (taxon.common if c in COMMON_COLUMNS else taxon[c]).lower() for c in columns}
    return tuple(sorted(values.items()))


def subset_mask(taxa: Sequence[Taxon], spec: str) -> np.ndarray:
    """Which taxa a `--subset` spec keeps (set look-ups: fast for 100k taxa and long lists).

    - `RANK=NAME[,NAME...]`, e.g. `class=Insecta` or `order=Lepidoptera,Coleoptera`;
    - a CSV/Parquet file whose header names ranks (pybioclip style, e.g. a `family`
      column; a row matches when all its non-empty rank cells match);
    - a text file, one name per line: scientific names (`Pica hudsonia`), common names
      or names at any rank (`Corvidae`)."""
    rank, sep, values = spec.partition("=")
    rank = rank.strip().lower()
    if sep and (rank in RANKS or rank in COMMON_COLUMNS) and not Path(spec).exists():
        names = [v.strip() for v in next(csv.reader([values]), []) if v.strip()]
        if not names:
            raise TreeclipError(f"--subset {spec}: no names after '='")
        keep = _match_names(spec, names, [_rank_keys(t, rank) for t in taxa])
    else:
        path = Path(spec)
        if not path.is_file():
            raise TreeclipError(f"--subset {spec}: neither RANK=NAME (rank one of {', '.join(RANKS)}) nor a file")
        if path.suffix.lower() in (".parquet", ".pq") or _has_rank_header(path):
            keep = np.zeros(len(taxa), dtype=bool)
            wanted: dict[tuple[str, ...], set] = {}
            for row in read_rows(path):
                columns = tuple(c for c in (*RANKS, *COMMON_COLUMNS) if row.get(c, "").strip())
                if columns:
                    key = _row_key(row, columns)
                    wanted.setdefault(tuple(k for k, _ in key), set()).add(key)
            for columns, keys in wanted.items():
                keep |= np.fromiter((_taxon_key(t, columns) in keys for t in taxa), bool, len(taxa))
        else:
            names = [ln.strip() for ln in read_text(path).splitlines() if ln.strip() and not ln.startswith("#")]
            keep = _match_names(spec, names, [_name_keys(t) for t in taxa])
    if not keep.any():
        raise TreeclipError(f"--subset {spec}: matches none of the {len(taxa)} label taxa")
    return keep


def _has_rank_header(path: Path) -> bool:
    """Whether a text file's first line is a CSV header naming a rank."""
    first = read_text(path).split("\n", 1)[0].lower().replace('"', "")
    return any(h.strip() in RANKS for h in first.split(","))


def _match_names(spec: str, names: list[str], keys: list[set[str]]) -> np.ndarray:
    """Taxa whose keys meet `names`; one stderr line lists names that matched nothing."""
    wanted = {n.lower() for n in names}
    keep = np.fromiter((bool(k & wanted) for k in keys), bool, len(keys))
    seen = set().union(*keys) if keys else set()
    missing = [n for n in names if n.lower() not in seen]
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
