"""Sources whose images are on the web: each yields `SourceItem`s with `remote=True`, the
URL as the item's `path`, and the image's `url`, `license` and `rights_holder` in `extra`.

- URL table (CSV/TSV or Parquet): an image URL column (`url`, `image_url`, `photo_url`,
  `identifier`, or one named with `FILE::COLUMN`), the label columns a catalog takes
  (`sources.LabelColumns`), optionally `license` and `rights_holder`.
- GBIF Darwin Core Archive (a download's folder or zip): `multimedia.txt` rows whose
  `type` is StillImage (or `format` image/*) joined on `gbifID` with `occurrence.txt`
  (`kingdom` .. `genus`, `specificEpithet`, else `scientificName`; `vernacularName`). The
  image's `license`/`rightsHolder` win over the occurrence's.
- iNaturalist open data (`observations.csv`, `photos.csv`, `taxa.csv`, optionally
  `observers.csv`; tab-separated as published): photo URLs as the open-data docs build
  them, `{base}/photos/{photo_id}/medium.{extension}`; the 7 ranks from the taxon's
  `ancestry` (ids joined by `/`) and its own rank.

The large export files are streamed row by row (only the smaller side of each join is
held in memory). Errors that make a file unusable are one TreeclipError line naming it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterator, TextIO

from treeclip.data.sources import LabelColumns, SourceItem, cell_text, pick_column, read_source, split_root
from treeclip.data.tables import read_rows
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import RANKS

URL_COLUMNS = ("url", "image_url", "photo_url", "identifier")
LICENSE_COLUMNS = ("license", "licence", "license_code")
RIGHTS_COLUMNS = ("rights_holder", "rightsholder", "attribution", "creator")
INAT_OPEN_DATA = "https://inaturalist-open-data.s3.amazonaws.com"
"""Where iNaturalist's open-data photos are (`photos/{photo_id}/{size}.{extension}`)."""
URL_KINDS = ("urls", "gbif", "inat-open")


def _extra(url: str, license_: str, rights: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in (("url", url), ("license", license_), ("rights_holder", rights)) if v)


# -- URL tables ---------------------------------------------------------------------------


def read_url_table(path: str | os.PathLike, url_column: str | None = None) -> Iterator[SourceItem]:
    """Rows of a CSV/TSV or Parquet table of image URLs and their taxa."""
    path = Path(path)
    if not path.is_file():
        raise TreeclipError(f"{path}: URL table not found")
    rows = read_rows(path, what="URL table")
    if not rows:
        return
    columns = {c: c for c in rows[0]}
    url_col = pick_column(columns, (url_column.strip().lower(),) if url_column else URL_COLUMNS)
    if url_col is None:
        raise TreeclipError(f"{path}: no URL column ({url_column or ' or '.join(URL_COLUMNS)})")
    cols = LabelColumns.of(path, columns)
    lic, rights = pick_column(columns, LICENSE_COLUMNS), pick_column(columns, RIGHTS_COLUMNS)
    source = f"urls:{path.name}"
    for i, row in enumerate(rows, start=1):
        url = cell_text(row.get(url_col))
        sid = (cell_text(row.get(cols.id)) if cols.id else "") or url or str(i)
        error = "" if url else f"{path}:{i}: no URL"
        ranks, common, name = cols.label(row)
        extra = _extra(url, cell_text(row.get(lic)) if lic else "", cell_text(row.get(rights)) if rights else "")
        yield SourceItem(source, sid, url, ranks, common, name, error, remote=True, extra=extra)


# -- streamed tab- or comma-separated exports ------------------------------------------------


def _rows(stream: TextIO, what: str) -> Iterator[dict[str, str]]:
    """Rows of an export file as lower-cased column -> stripped text. Tab-separated files
    are read without quoting (Darwin Core and iNat exports: a `"` is part of the text)."""
    try:
        header = stream.readline()
        tab = "\t" in header
        names = [h.strip().lower() for h in next(csv.reader([header], delimiter="\t" if tab else ","), [])]
        if not names or names == [""]:
            raise TreeclipError(f"{what}: empty file (no header row)")
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE) if tab else csv.reader(stream)
        for line, values in enumerate(reader, start=2):
            if len(values) > len(names):
                raise TreeclipError(f"{what}: line {line} has more fields than the header")
            yield {n: v.strip() for n, v in zip(names, values)}
    except UnicodeDecodeError:
        raise TreeclipError(f"{what}: not UTF-8 text") from None
    except csv.Error as e:
        raise TreeclipError(f"{what}: malformed CSV ({e})") from None


Opener = Callable[[str], "contextlib.AbstractContextManager[TextIO]"]


@contextlib.contextmanager
def _archive(path: Path) -> Iterator[tuple[Opener, Callable[[str], bool]]]:
    """(open member by name as text, has member) for a folder or a zip file."""
    if path.is_dir():
        yield (lambda name: open(path / name, encoding="utf-8-sig", newline=""),
               lambda name: (path / name).is_file())
        return
    if not path.is_file():
        raise TreeclipError(f"{path}: not found")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TreeclipError(f"{path}: not a folder or a readable zip ({e})") from None
    with zf:
        names = set(zf.namelist())
        yield (lambda name: io.TextIOWrapper(zf.open(name), encoding="utf-8-sig", newline=""),
               lambda name: name in names)


# -- GBIF Darwin Core Archive ---------------------------------------------------------------

GBIF_RANKS = {"kingdom": "kingdom", "phylum": "phylum", "class": "class", "order": "order", "family": "family",
              "genus": "genus", "specificepithet": "species"}


def _is_still_image(row: dict[str, str]) -> bool:
    return row.get("type", "").lower() == "stillimage" or row.get("format", "").lower().startswith("image/")


def _gbif_media(stream: TextIO, what: str) -> dict[str, list[tuple[str, str, str]]]:
    """gbifID -> its images' (URL, license, rights holder), in file order."""
    media: dict[str, list[tuple[str, str, str]]] = {}
    for row in _rows(stream, what):
        if _is_still_image(row) and row.get("identifier"):
            rights = row.get("rightsholder") or row.get("creator", "")
            media.setdefault(row.get("gbifid", ""), []).append((row["identifier"], row.get("license", ""), rights))
    return media


def read_gbif_dwca(path: str | os.PathLike) -> Iterator[SourceItem]:
    """The still images of a GBIF Darwin Core Archive (folder or zip), one item per image
    (`source_id` `gbifID/n`), labelled by their occurrence's names."""
    path = Path(path)
    with _archive(path) as (open_member, has):
        for name in ("occurrence.txt", "multimedia.txt"):
            if not has(name):
                raise TreeclipError(f"{path}: no {name} (not a GBIF Darwin Core Archive with images)")
        with open_member("multimedia.txt") as f:
            media = _gbif_media(f, f"{path}/multimedia.txt")
        source = f"gbif:{path.name}"
        with open_member("occurrence.txt") as f:
            for row in _rows(f, f"{path}/occurrence.txt"):
                yield from _gbif_items(source, row, media.get(row.get("gbifid", ""), []))


def _gbif_items(source: str, row: dict[str, str], images: list[tuple[str, str, str]]) -> Iterator[SourceItem]:
    ranks = tuple((r, " ".join(row[c].split())) for c, r in GBIF_RANKS.items() if row.get(c))
    # scientificName carries authorship; the split ranks are cleaner when the export has them
    name = "" if any(r in ("genus", "species") for r, _ in ranks) else row.get("scientificname", "")
    common = row.get("vernacularname", "")
    for n, (url, lic, rights) in enumerate(images):
        extra = _extra(url, lic or row.get("license", ""), rights or row.get("rightsholder", ""))
        yield SourceItem(source, f"{row.get('gbifid', '')}/{n}", url, ranks, common, name, remote=True, extra=extra)


# -- iNaturalist open data ---------------------------------------------------------------------


def inat_photo_url(photo_id: str, extension: str, base: str = INAT_OPEN_DATA, size: str = "medium") -> str:
    """The open-data URL of one photo."""
    return f"{base.rstrip('/')}/photos/{photo_id}/{size}.{extension}"


def _inat_table(open_member: Opener, folder: Path, name: str) -> Iterator[dict[str, str]]:
    with open_member(name) as f:
        yield from _rows(f, str(folder / name))


def _inat_lineages(open_member: Opener, folder: Path) -> dict[str, tuple[tuple[str, str], ...]]:
    """taxon_id -> its 7 ranks (those it has), from taxa.csv's ancestry and ranks."""
    taxa = {r["taxon_id"]: (r.get("ancestry", ""), r.get("rank", "").lower(), r.get("name", ""))
            for r in _inat_table(open_member, folder, "taxa.csv") if r.get("taxon_id")}
    lineages = {}
    for tid, (ancestry, _, _) in taxa.items():
        got = {}
        for aid in [a for a in ancestry.split("/") if a] + [tid]:
            _, rank, name = taxa.get(aid, ("", "", ""))
            if rank in RANKS and name:
                got[rank] = name
        lineages[tid] = tuple((r, got[r]) for r in RANKS if r in got)
    return lineages


def read_inat_open_data(folder: str | os.PathLike, base_url: str | None = None) -> Iterator[SourceItem]:
    """The photos of an iNaturalist open-data export (or a subset of it with the same
    files), one item per photo (`source_id` the photo id), labelled by the observation's
    taxon. `base_url` replaces the open-data bucket (a mirror)."""
    folder = Path(folder)
    with _archive(folder) as (open_member, has):
        for name in ("observations.csv", "photos.csv", "taxa.csv"):
            if not has(name):
                raise TreeclipError(f"{folder}: no {name} (not an iNaturalist open-data export)")
        lineages = _inat_lineages(open_member, folder)
        taxon_of = {r["observation_uuid"]: r.get("taxon_id", "")
                    for r in _inat_table(open_member, folder, "observations.csv") if r.get("observation_uuid")}
        observers = ({r["observer_id"]: r.get("name") or r.get("login", "")
                      for r in _inat_table(open_member, folder, "observers.csv") if r.get("observer_id")}
                     if has("observers.csv") else {})
        source = f"inat-open:{folder.name}"
        for row in _inat_table(open_member, folder, "photos.csv"):
            yield _inat_item(source, row, taxon_of, lineages, observers, base_url or INAT_OPEN_DATA, folder)


def _inat_item(source: str, row: dict[str, str], taxon_of: dict[str, str], lineages: dict, observers: dict,
               base: str, folder: Path) -> SourceItem:
    pid, ext = row.get("photo_id", ""), row.get("extension", "") or "jpg"
    url = inat_photo_url(pid, ext, base) if pid else ""
    ranks = lineages.get(taxon_of.get(row.get("observation_uuid", ""), ""), ())
    extra = _extra(url, row.get("license", ""), observers.get(row.get("observer_id", ""), ""))
    error = "" if pid else f"{folder}/photos.csv: a row without photo_id"
    if pid and not ranks:
        error = f"{folder}: photo {pid}: its observation has no taxon with a rank in taxa.csv"
    return SourceItem(source, pid, url, ranks, "", "", error, remote=True, extra=extra)


# -- dispatch -------------------------------------------------------------------------------------


def read_any_source(kind: str, spec: str) -> Iterator[SourceItem]:
    """`sources.read_source`, and kind = urls (`FILE[::URL_COLUMN]`), gbif (`DIR_OR_ZIP`),
    inat-open (`DIR[::BASE_URL]`)."""
    if kind not in URL_KINDS:
        return read_source(kind, spec)
    if kind == "gbif":
        return read_gbif_dwca(spec)
    path, option = split_root(spec)
    return read_url_table(path, option) if kind == "urls" else read_inat_open_data(path, option)
