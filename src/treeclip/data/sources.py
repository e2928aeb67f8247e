"""Readers for the image collections a build starts from. Each yields `SourceItem`s: an
image path and the raw names the source gives it, before taxonomy resolution.

- Image folder: class folders named by scientific name (`Pica hudsonia/`), by taxonomic
  name (`Animalia Chordata ... Pica hudsonia/`, spaces or underscores, an iNat-style
  leading number `00042_` ignored), or nested one folder per rank (`Animalia/Chordata/...`).
- Catalog (CSV or Parquet): an image path column (`path`, `file`, `filename`, `image`, ...)
  relative to the catalog's folder or a given root, any subset of the 7 rank columns,
  optionally a common name (`common`, `common_name`, `vernacular_name`, `vernacular`),
  `scientific_name`, `source_id`.
- iNat-2021-style JSON: `images` (id, file_name), `annotations` (image_id, category_id) and
  `categories` (kingdom .. genus, specific_epithet or species, common_name, name).

A path that escapes its root (`..`, an absolute path elsewhere, a symlink out) is refused:
the item carries the reason in `error`, and the build reports and counts it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from treeclip.data.images import IMAGE_EXTENSIONS
from treeclip.data.paths import safe_join  # also re-exported from here
from treeclip.data.tables import read_rows
from treeclip.errors import InputError, TreeclipError
from treeclip.taxonomy.taxon import COMMON_COLUMNS, RANKS

PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path")
NAME_COLUMNS = ("scientific_name", "taxonomic_name", "name", "taxon")
ID_COLUMNS = ("source_id", "id", "image_id")
RANK_ALIASES = {"specific_epithet": "species", "epithet": "species", "class_": "class"}


@dataclass(frozen=True)
class SourceItem:
    """One image of a source, with the names the source gives it (not yet resolved).

    `ranks` holds raw rank -> name for the ranks the source has; `name` a scientific or
    taxonomic name whose ranks the source does not split (folder names); `error` says why
    the item cannot be used (the path escaped its root, no label), else ''. A `remote`
    item's `path` is the URL it is fetched from (`treeclip.data.download`); `extra` holds
    what the source says about the image that the dataset keeps beside it (`url`,
    `license`, `rights_holder`: `dataset.OPTIONAL_COLUMNS`).
    """

    source: str
    source_id: str
    path: str
    ranks: tuple[tuple[str, str], ...] = ()
    common: str = ""
    name: str = ""
    error: str = ""
    remote: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def label(self) -> tuple:
        """What identifies the taxon of this item (items sharing it resolve together)."""
        return (self.ranks, self.common, self.name)


# -- image folders ---------------------------------------------------------------------

_LEADING_ID = re.compile(r"^\d+$")


def folder_name_parts(parts: list[str]) -> tuple[dict[str, str], str]:
    """Class-folder path parts -> (ranks, name). Seven tokens starting with a capital are
    a full lineage (one folder or nested); otherwise the last folder is a name for the resolver."""
    def tokens_of(ps: list[str]) -> list[str]:
        tokens = [t for p in ps for t in re.split(r"[\s_]+", p) if t]
        if tokens and _LEADING_ID.match(tokens[0]):
            tokens = tokens[1:]  # iNat-2021 folders: 00042_Animalia_Chordata_...
        return tokens

    tokens = tokens_of(parts)
    if len(tokens) == len(RANKS) and tokens[0][:1].isupper():
        return dict(zip(RANKS, tokens)), ""
    return {}, " ".join(tokens_of(parts[-1:]))  # e.g. `Corvidae/Pica hudsonia`: the class folder


def read_image_folder(root: str | os.PathLike) -> Iterator[SourceItem]:
    """Every image file under `root`, labelled by the folders between `root` and it."""
    root = Path(root)
    if not root.is_dir():
        raise TreeclipError(f"{root}: not a folder")
    source = f"folder:{root.resolve().name}"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            if Path(fname).suffix.lower() not in IMAGE_EXTENSIONS or fname.startswith("."):
                continue
            full = Path(dirpath) / fname
            rel = full.relative_to(root).as_posix()
            parts = list(full.relative_to(root).parts[:-1])
            if not parts:
                yield SourceItem(source, rel, str(full), error=f"{full}: not inside a class folder")
                continue
            ranks, name = folder_name_parts(parts)
            try:
                path = str(safe_join(root, rel, what=str(full)))
                error = ""
            except InputError as e:
                path, error = "", str(e)
            yield SourceItem(source, rel, path, tuple(ranks.items()), "", name, error)


# -- catalogs --------------------------------------------------------------------------


def pick_column(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    """The first of `names` among `columns` (lower-cased name -> column), or None."""
    return next((columns[n] for n in names if n in columns), None)


def cell_text(v: object) -> str:
    """A table cell as one line of text ('' for None and NaN)."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return " ".join(str(v).split())


@dataclass(frozen=True)
class LabelColumns:
    """Which columns of a table name an item's taxon (lower-cased names)."""

    ranks: dict[str, str]  # rank -> column
    common: str | None
    name: str | None
    id: str | None

    @classmethod
    def of(cls, path: Path, columns: Iterable[str]) -> "LabelColumns":
        """The label columns among `columns`; one-line TreeclipError when there are none."""
        columns = {c: c for c in columns}
        ranks = {RANK_ALIASES.get(k, k): c for k, c in columns.items() if RANK_ALIASES.get(k, k) in RANKS}
        common, name, id_ = (pick_column(columns, n) for n in (COMMON_COLUMNS, NAME_COLUMNS, ID_COLUMNS))
        if not ranks and name is None:
            raise TreeclipError(f"{path}: no rank columns ({', '.join(RANKS)}) and no scientific_name column")
        return cls(dict(sorted(ranks.items(), key=lambda x: RANKS.index(x[0]))), common, name, id_)

    def label(self, row: dict) -> tuple[tuple[tuple[str, str], ...], str, str]:
        """(ranks, common, name) of one row."""
        ranks = tuple((r, cell_text(row.get(c))) for r, c in self.ranks.items() if cell_text(row.get(c)))
        common = cell_text(row.get(self.common)) if self.common else ""
        return ranks, common, cell_text(row.get(self.name)) if self.name else ""


def read_catalog(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[SourceItem]:
    """Rows of a CSV/TSV or Parquet catalog; image paths relative to `root` (default: the
    catalog's folder)."""
    path = Path(path)
    if not path.is_file():
        raise TreeclipError(f"{path}: catalog not found")
    root = Path(root) if root is not None else path.parent
    rows = read_rows(path, what="catalog")
    if not rows:
        return
    columns = {c: c for c in rows[0]}  # read_rows lower-cases the column names
    path_col = pick_column(columns, PATH_COLUMNS)
    if path_col is None:
        raise TreeclipError(f"{path}: no image path column (one of {', '.join(PATH_COLUMNS)})")
    cols = LabelColumns.of(path, columns)
    source = f"catalog:{path.name}"
    for i, row in enumerate(rows, start=1):
        rel = cell_text(row.get(path_col))
        sid = cell_text(row.get(cols.id)) if cols.id else rel
        ranks, common, name = cols.label(row)
        what = f"{path}:{i}: {rel or '(no path)'}"
        try:
            full, error = str(safe_join(root, rel, what=what)), ""
        except InputError as e:
            full, error = "", str(e)
        yield SourceItem(source, sid or rel or str(i), full, ranks, common, name, error)


# -- iNat-2021-style JSON ---------------------------------------------------------------


def read_inat_json(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[SourceItem]:
    """Images of an iNat-2021-style annotation file; `file_name`s relative to `root`
    (default: the JSON file's folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise TreeclipError(f"{path}: not found") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise TreeclipError(f"{path}: not valid UTF-8 JSON ({' '.join(str(e).split())[:100]})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise TreeclipError(f"{path}: not an iNat-style file (needs 'images' and 'categories')")
    cats = {}
    for c in data["categories"]:
        ranks = {RANK_ALIASES.get(k, k): cell_text(v) for k, v in c.items() if RANK_ALIASES.get(k, k) in RANKS}
        ranks = tuple((r, ranks[r]) for r in RANKS if ranks.get(r))
        cats[c.get("id")] = (ranks, cell_text(c.get("common_name")), "" if ranks else cell_text(c.get("name")))
    label_of = {a.get("image_id"): a.get("category_id") for a in data.get("annotations", [])}
    source = f"inat:{path.name}"
    for img in data["images"]:
        iid, rel = img.get("id"), cell_text(img.get("file_name"))
        what = f"{path}: image {iid} {rel}"
        cat = cats.get(label_of.get(iid))
        if cat is None:
            yield SourceItem(source, str(iid), "", error=f"{what}: no annotation with a known category")
            continue
        try:
            full, error = str(safe_join(root, rel, what=what)), ""
        except InputError as e:
            full, error = "", str(e)
        yield SourceItem(source, str(iid), full, cat[0], cat[1], cat[2], error)


# -- dispatch ---------------------------------------------------------------------------


def split_root(spec: str) -> tuple[str, str | None]:
    """`FILE::ROOT` -> (FILE, ROOT); plain `FILE` -> (FILE, None)."""
    if "::" in spec:
        a, b = spec.split("::", 1)
        return a, b or None
    return spec, None


def read_source(kind: str, spec: str) -> Iterator[SourceItem]:
    """kind = folder | catalog | inat; spec = a path, for catalog/inat optionally `::ROOT`."""
    if kind == "folder":
        return read_image_folder(spec)
    path, root = split_root(spec)
    if kind == "catalog":
        return read_catalog(path, root)
    if kind == "inat":
        return read_inat_json(path, root)
    raise ValueError(f"unknown source kind {kind!r}")
