"""Where a task's images and names come from: the rows of a catalog, an image folder or
a treeclip dataset dir, a table of class names -> taxa, and the NCBI resolver for names
without ranks. Each row is a dict of text: `path`, ranks, `common`, `name`, `split`, and
`_where` (the file and line or key, for problem lines)."""

from __future__ import annotations

from pathlib import Path

from treeclip.data.images import IMAGE_EXTENSIONS
from treeclip.data.tables import read_rows, taxon_from_row
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import Taxon

Row = dict[str, str]


def catalog_rows(catalog: Path, spec: Path) -> list[Row]:
    """The rows of a CSV/Parquet catalog (a `path` column, ranks, `common`, `name`, `split`)."""
    if not catalog.is_file():
        raise TreeclipError(f"{spec}: cannot read catalog {catalog} (no such file)")
    rows = read_rows(catalog, what="catalog")
    if rows and "path" not in rows[0]:
        raise TreeclipError(f"{catalog}: catalog has no 'path' column")
    for i, row in enumerate(rows, start=2):
        row["_where"] = f"{catalog}:{i}"
    return rows


def folder_rows(root: Path, folder: str, spec: Path) -> list[Row]:
    """One row per image under `root/folder/<class>/`, named by its class folder."""
    top = root / folder
    if not top.is_dir():
        raise TreeclipError(f"{spec}: images.folder {top} is not a folder")
    rows = []
    for class_dir in sorted(p for p in top.iterdir() if p.is_dir()):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                rows.append({"path": f.relative_to(root).as_posix(), "name": class_dir.name, "_where": str(f)})
    return rows


def dataset_rows(dataset: Path, split: str, spec: Path) -> tuple[list[Row], dict[str, list[str]]]:
    """Rows of one split of a treeclip dataset dir (`path` is the sample key), and the
    keys of each shard file."""
    from treeclip.data.dataset import split_samples

    if not (dataset / "catalog.parquet").is_file():
        raise TreeclipError(f"{spec}: images.dataset {dataset} has no catalog.parquet")
    rows, shards = [], {}
    for sample in split_samples(dataset, split):
        key = sample.pop("key")
        shards.setdefault(sample.pop("shard"), []).append(key)
        rows.append({**sample, "path": key, "split": split, "_where": f"{dataset / 'catalog.parquet'}:{key}"})
    return rows, shards


def named_taxa(path: Path, spec: Path) -> dict[str, Taxon]:
    """A taxa table (`name` column + ranks, common name) as class name -> taxon."""
    if not path.is_file():
        raise TreeclipError(f"{spec}: cannot read taxa table {path} (no such file)")
    rows = read_rows(path, what="taxa table")
    if rows and "name" not in rows[0]:
        raise TreeclipError(f"{path}: taxa table has no 'name' column")
    return {row["name"]: taxon_from_row(row) for row in rows if row.get("name")}


def resolve_names(names: list[str]) -> dict[str, Taxon]:
    """Class names -> taxa with the offline NCBI resolver (`resolve_table`); names it
    cannot place (unknown, ambiguous) are left out."""
    try:
        import pandas as pd

        from treeclip.taxonomy.resolve import resolve_table
    except ImportError:  # the resolver is optional at this level: names stay names
        return {}
    table, _ = resolve_table(pd.DataFrame({"scientific_name": names}))
    found = {}
    for name, row in zip(names, table.to_dict("records")):
        if row["status"] in ("resolved", "filled", "conflict"):
            taxon = Taxon.from_ranks(row, row.get("common") or "")
            if not taxon.is_empty:
                found[name] = taxon
    return found
