"""Label sets: which taxa or labels a classifier chooses among.

- Tree-of-life label sources (`load_label_source`): the `taxa.parquet` shipped in a model
  or dataset dir, a user's CSV/Parquet (columns kingdom..species, common or common_name;
  the species column may hold the epithet or the binomial), `ncbi:CLADE` (species of a
  clade from the offline NCBI taxonomy), or a label set with precomputed embeddings in the
  published BioCLIP layout (`txt_emb_species.npy` + `.json`: a model dir treeclip wrote,
  a TreeOfLife-10M/200M download, or the one published for `hf-hub:imageomics/bioclip-2`).
- Subsets (`class=Insecta`, a species list file), vectorised over the taxa's columns, and
  custom labels (`--cls`, bins).

Their text embeddings and the cache are `treeclip.runtime.labels`; the layout of
precomputed label sets is `treeclip.runtime.labelsets`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from treeclip.cache import CachePaths, caches_or_default
from treeclip.data.tables import COMMON_COLUMNS, read_rows, read_taxa_table, taxon_from_row  # noqa: F401  (re-exported)
from treeclip.errors import TreeclipError
from treeclip.fsutil import read_text
from treeclip.log import get_logger
from treeclip.runtime.labelsets import DEFAULT_TEMPLATES, DEFAULT_TEXT_TYPE, LabelSet
from treeclip.runtime.taxa_columns import TaxaColumns
from treeclip.taxonomy.taxon import RANKS, Taxon

log = get_logger(__name__)

_Reader = Callable[[Path, Path], LabelSet]
"""`read_label_set` bound to the caller's caches and progress."""


def load_taxa(spec: str | None, model_spec: str | None = None, *, limit: int | None = None) -> list[Taxon]:
    """The label taxa of tree-of-life mode as `Taxon` objects (see `load_label_source`;
    for huge precomputed label sets prefer the columns `load_label_source` gives)."""
    source = load_label_source(spec, model_spec, limit=limit)
    return source.taxa if source.taxa is not None else source.columns.to_taxa()


def load_label_source(spec: str | None, model_spec: str | None = None, *, limit: int | None = None,
                      templates: Sequence[str] | None = None, text_type: str = DEFAULT_TEXT_TYPE,
                      caches: CachePaths | None = None, progress: bool = True) -> LabelSet:
    """The label set of tree-of-life mode. `spec` is one of:

    - a CSV/Parquet taxa table, or `ncbi:CLADE` (species under CLADE in the offline NCBI
      taxonomy, at most `limit`): taxa whose label embeddings are still to be encoded;
    - a `txt_emb_species` pair: either file, or a folder holding them (or `embeddings/`
      with them, as a TreeOfLife-10M/200M `--local-dir` download), or `hf-hub:ORG/NAME`
      of such a dataset repo in the local Hugging Face cache: precomputed, memory-mapped;
    - a dataset or model dir: its pair when treeclip wrote it there for the model saved
      in it with these `templates` and `text_type`, else its `taxa.parquet`.

    Without `spec`, the model's own: its dir as above, else the set published for a
    published model (`hf-hub:imageomics/bioclip-2` -> TreeOfLife-200M, read offline).
    `caches`: where parsed names are kept and which hub folder is searched first."""
    from functools import partial

    from treeclip.runtime.labelsets import model_label_names, read_label_set
    from treeclip.taxonomy.templates import load_templates

    templates = tuple(templates) if templates is not None else load_templates(DEFAULT_TEMPLATES)
    caches = caches_or_default(caches)
    read = partial(read_label_set, caches=caches, progress=progress)
    prefer = model_label_names(model_spec)  # a label set named for the model, where a folder has one
    if spec and spec.startswith("ncbi:"):
        return LabelSet.of_taxa(_ncbi_taxa(spec, limit), spec)
    if spec is None:
        return _model_labels(model_spec, templates, text_type, read, caches)
    from treeclip.model.hub import is_hub_spec

    if is_hub_spec(spec):
        return _hub_labels(spec, "the label set", read, caches, prefer)
    from treeclip.runtime.labelsets import find_pair

    path = Path(spec)
    if path.is_dir():
        found = _dir_labels(path, templates, text_type, read, prefer)
        if found is None:
            raise TreeclipError(f"{spec}: folder has no taxa.parquet (nor a txt_emb_species label set)")
        return found
    pair = find_pair(path)
    return read(*pair) if pair else LabelSet.of_taxa(read_taxa_table(path), spec)


def _ncbi_taxa(spec: str, limit: int | None) -> list[Taxon]:
    from treeclip.taxonomy.ncbi import default_reference

    clade = spec[len("ncbi:"):].strip()
    taxa = list(default_reference().species_in(clade, limit=limit))
    if not taxa:
        raise TreeclipError(f"{spec}: NCBI has no species with clean names under {clade}")
    return taxa


def _dir_labels(folder: Path, templates: Sequence[str], text_type: str, read: _Reader,
                prefer: Sequence[str] = ()) -> LabelSet | None:
    """A folder's label set: one named for the model (`prefer`), else its species pair
    when it fits (or when there is no taxa.parquet to encode instead), else its
    taxa.parquet; None when it has neither."""
    from treeclip.runtime.labelsets import EMBEDDINGS_FILE, META_FILE, TAXA_FILE, find_pair, pair_fits

    pair = find_pair(folder, prefer)
    table = folder / TAXA_FILE
    if pair and (pair[0].name != EMBEDDINGS_FILE or not table.is_file()):
        return read(*pair)
    if pair and pair_fits(folder, templates, text_type):
        return read(*pair)
    if not table.is_file():
        return None
    if pair and (folder / META_FILE).is_file():
        log.warning(f"{folder}: its txt_emb_species pair was made by another model, templates or text "
                    "type; encoding its taxa.parquet instead")
    return LabelSet.of_taxa(read_taxa_table(table), str(table))


def _hub_labels(spec: str, what: str, read: _Reader, caches: CachePaths, prefer: Sequence[str] = ()) -> LabelSet:
    from treeclip.runtime.labelsets import hub_label_set

    return read(*hub_label_set(spec, what, hub_dir=caches.hub, prefer=prefer))


def _model_labels(model_spec: str | None, templates: Sequence[str], text_type: str, read: _Reader,
                  caches: CachePaths) -> LabelSet:
    """The label set that comes with a model: see `load_label_source`."""
    if not model_spec:
        raise TreeclipError("no taxa table: give taxa (a CSV/Parquet file, a dir with taxa.parquet, a "
                            "txt_emb_species label set or ncbi:CLADE), or load the model from a dir that has them")
    from treeclip.model.hub import published_label_set
    from treeclip.model.weights import resolve_source
    from treeclip.runtime.labelsets import model_label_names

    base = resolve_source(model_spec, hub_dir=caches.hub)
    folder = base if base.is_dir() else base.parent if base.is_file() else None
    found = _dir_labels(folder, templates, text_type, read) if folder is not None else None
    if found is not None:
        return found
    published = published_label_set(model_spec)
    if published:
        return _hub_labels(published, f"the label set published for {model_spec}", read, caches,
                           model_label_names(model_spec))
    raise TreeclipError(f"{model_spec}: the model has no taxa.parquet (nor a txt_emb_species label set); give "
                        "a taxa table with --taxa FILE (CSV/Parquet), a label set with --taxa DIR, or --taxa ncbi:CLADE")


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
      or names at any rank (`Corvidae`);
    - `ncbi:CLADE`: the taxa whose binomial the offline NCBI taxonomy lists under CLADE,
      a clade of any NCBI rank (`ncbi:Passeri`, a suborder the 7 ranks do not name)."""
    columns = taxa if isinstance(taxa, TaxaColumns) else TaxaColumns.from_taxa(list(taxa))
    if spec.startswith("ncbi:"):
        keep = _match_ncbi(columns, spec)
        if not keep.any():
            raise TreeclipError(f"--subset {spec}: none of the {len(columns)} label taxa is an NCBI species there")
        return keep
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


def _match_ncbi(columns: TaxaColumns, spec: str) -> np.ndarray:
    """Taxa whose `genus epithet` NCBI lists among the species below the clade."""
    binomials = {f"{t.genus} {t.species}".lower() for t in _ncbi_taxa(spec, None)}
    return _match_binomials(columns, binomials)[0]


def _has_rank_header(path: Path) -> bool:
    """Whether a text file's first line is a CSV header naming a rank."""
    first = read_text(path).split("\n", 1)[0].lower().replace('"', "")
    return any(h.strip() in RANKS for h in first.split(","))


def _report_missing(spec: str, names: list[str], keep: np.ndarray, found: set[str]) -> np.ndarray:
    """`keep`, after one stderr line listing the names that matched no label taxon."""
    missing = [n for n in names if n.lower() not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log.warning(f"--subset {spec}: no label taxa for {shown}")
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
