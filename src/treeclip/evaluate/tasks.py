"""Evaluation tasks: a small `task.toml` that says where the images are and what the classes are.

```toml
name = "synth-unseen"
description = "Synthetic tree of life: species never seen in training"
[images]
catalog = "catalog.csv"   # or: folder = "images" (one subfolder per class), or: dataset = "DIR"
root = "."                # image root: relative to task.toml, absolute, or with ${ENV_VAR}
split = "test"            # optional: keep only catalog rows (dataset: shards) of this split
[classes]
rank = "species"          # the rank that defines a class (default species)
text_type = "taxon_com"   # the task's default class-name text type ("as-given" for non-taxa)
taxa = "taxa.csv"         # optional: class name -> kingdom..species, common
resolve = true            # resolve names without ranks with the NCBI resolver (if installed)
```

Catalog and taxa table: CSV/TSV or Parquet (`treeclip.data.tables`). Catalog columns:
`path` (relative to root; it may not escape it, though links inside the root may point
anywhere), `kingdom`..`species`, a common name (`common`, `common_name`,
`vernacular_name`), optional `name` (the class as the dataset names it) and `split`. A
row with only a `name` gets its taxonomy from the `taxa` table, else from the resolver,
else it stays a named class without taxonomy (zero-shot then uses the name as given).
The rows come from `treeclip.evaluate.task_sources`; a dataset task reads the dataset
dir through `treeclip.data` (`split_samples`, `iter_shard_images`).

Any string value may use `${ENV_VAR}`; an unset variable is an error naming it. A bad
spec raises one `TreeclipError` line naming the file and the problem; a bad catalog row
is one line in `Task.problems` and the rest of the task goes on.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from treeclip.data.paths import safe_join
from treeclip.data.tables import taxon_from_row
from treeclip.errors import InputError, TreeclipError
from treeclip.evaluate.task_sources import catalog_rows, dataset_rows, folder_rows, named_taxa, resolve_names
from treeclip.evaluate.zeroshot import AS_GIVEN, CLASS_TEXT_TYPES, DEFAULT_TEXT_TYPE
from treeclip.fsutil import read_text
from treeclip.taxonomy.taxon import RANKS, Taxon

SPEC_NAME = "task.toml"
DATA_ENV = "TREECLIP_DATA"
"""The environment variable the shipped specs read: the root of the user's copies."""
SHIPPED_DIR = Path(__file__).with_name("tasks")

_TOP_KEYS = {"name", "description", "images", "classes"}
_IMAGE_KEYS = {"catalog", "folder", "dataset", "root", "split"}
_CLASS_KEYS = {"rank", "text_type", "taxa", "resolve"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class TaskClass:
    """One class: the name the task gives it and its taxon at the class rank (None when
    only a name is known)."""

    name: str
    taxon: Taxon | None = None


@dataclass
class Task:
    """A loaded task: images (paths under `root`, or shard members), a label per image
    into `classes`, and each image's full taxon (for the per-rank analyses)."""

    name: str
    description: str
    spec_path: Path
    rank: str
    text_type: str
    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[TaskClass]
    taxa: list[Taxon | None]
    splits: list[str]
    shards: dict[str, list[str]] | None = None  # shard file -> keys, for dataset tasks
    problems: list[str] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def image_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def images_fingerprint(self) -> str:
        """sha256 of what the features depend on: the image list and each file's size
        and mtime (shard tasks: the shards' sizes and mtimes), not the class names."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(self.root.resolve()).encode())
            files = sorted(self.shards) if self.shards is not None else None
            for p in self.paths:
                h.update(b"\0" + p.encode())
                if files is None:
                    h.update(_stat_key(self.root / p))
            for f in files or ():
                h.update(b"\1" + f.encode() + _stat_key(Path(f)))
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def _stat_key(path: Path) -> bytes:
    try:
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}".encode()
    except OSError:
        return b"missing"


# -- spec loading -------------------------------------------------------------------
def shipped_tasks() -> dict[str, Path]:
    """Name -> spec file of the tasks that ship with treeclip (the paper's ten)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.toml"))}


def find_task(ref: str) -> Path:
    """A task reference: a task folder (with task.toml), a .toml file, or a shipped task
    name (`$TREECLIP_DATA/<name>/task.toml` first, when there is one)."""
    path = Path(ref)
    if path.is_dir():
        path = path / SPEC_NAME
        if not path.is_file():
            raise TreeclipError(f"{ref}: folder has no {SPEC_NAME}")
        return path
    if path.is_file():
        return path
    shipped = shipped_tasks()
    if ref in shipped:
        # The user's own task folder in the data root wins over the shipped spec: a
        # Rare Species folder built there, or a spec with a taxa table.
        own = Path(os.environ.get(DATA_ENV, "")) / ref / SPEC_NAME if os.environ.get(DATA_ENV) else None
        return own if own is not None and own.is_file() else shipped[ref]
    raise TreeclipError(f"{ref}: no such task file or folder, nor a shipped task ({', '.join(shipped)})")


def _interpolate(value: str, where: str, spec: Path) -> str:
    def sub(m: re.Match) -> str:
        var = m.group(1)
        if var not in os.environ:
            raise TreeclipError(f"{spec}: {where} uses ${{{var}}}, but the environment variable {var} is not set")
        return os.environ[var]

    return _ENV.sub(sub, value)


def _local_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _read_spec(spec: Path) -> dict:
    try:
        data = tomllib.loads(read_text(spec))
    except tomllib.TOMLDecodeError as e:
        raise TreeclipError(f"{spec}: invalid TOML ({e})") from None
    _check_keys(data, _TOP_KEYS, "", spec)
    for table, keys in (("images", _IMAGE_KEYS), ("classes", _CLASS_KEYS)):
        if table in data and not isinstance(data[table], dict):
            raise TreeclipError(f"{spec}: [{table}] must be a table")
        _check_keys(data.get(table, {}), keys, f"{table}.", spec)
    return data


def _check_keys(table: dict, allowed: set[str], prefix: str, spec: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TreeclipError(f"{spec}: unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(allowed))})")


def _string(table: dict, key: str, where: str, spec: Path, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TreeclipError(f"{spec}: {where} must be a string, got {type(value).__name__}")
    return _interpolate(value, where, spec)


def _image_rows(images: dict, spec: Path, base: Path) -> tuple[list[dict[str, str]], dict[str, list[str]] | None, Path]:
    """(rows, shard file -> keys or None, image root) of the [images] table."""
    sources = [k for k in ("catalog", "folder", "dataset") if k in images]
    if len(sources) != 1:
        raise TreeclipError(f"{spec}: [images] needs exactly one of catalog, folder, dataset (got {len(sources) or 'none'})")
    source = sources[0]
    split = _string(images, "split", "images.split", spec)
    if source == "dataset":
        dataset = _local_path(_string(images, "dataset", "images.dataset", spec), base)
        rows, shards = dataset_rows(dataset, split or "val", spec)
        return rows, shards, dataset
    root = _local_path(_string(images, "root", "images.root", spec, "."), base)
    if not root.is_dir():
        raise TreeclipError(f"{spec}: image root {root} is not a folder")
    if source == "catalog":
        rows = catalog_rows(_local_path(_string(images, "catalog", "images.catalog", spec), base), spec)
    else:
        rows = folder_rows(root, _string(images, "folder", "images.folder", spec), spec)
    if split is not None:
        rows = [r for r in rows if r.get("split", "") == split]
    return rows, None, root


def load_task(ref: str | Path) -> Task:
    """Load a task from a shipped name, a folder or a spec file (see the module docstring)."""
    spec = find_task(str(ref))
    base = spec.parent
    data = _read_spec(spec)
    name = _string(data, "name", "name", spec)
    if not name:
        raise TreeclipError(f"{spec}: missing name")
    description = _string(data, "description", "description", spec, "") or ""
    images = data.get("images")
    if not images:
        raise TreeclipError(f"{spec}: missing [images] table")
    classes = data.get("classes", {})
    rank = _string(classes, "rank", "classes.rank", spec, "species")
    if rank not in RANKS:
        raise TreeclipError(f"{spec}: classes.rank {rank!r} is not a rank ({', '.join(RANKS)})")
    text_type = _string(classes, "text_type", "classes.text_type", spec, DEFAULT_TEXT_TYPE)
    if text_type not in CLASS_TEXT_TYPES:
        raise TreeclipError(f"{spec}: classes.text_type {text_type!r} is not one of {', '.join(CLASS_TEXT_TYPES)}")
    resolve = classes.get("resolve", True)
    if not isinstance(resolve, bool):
        raise TreeclipError(f"{spec}: classes.resolve must be true or false")
    rows, shards, root = _image_rows(images, spec, base)
    table = None
    if "taxa" in classes:
        table = named_taxa(_local_path(_string(classes, "taxa", "classes.taxa", spec), base), spec)
    task = _build(name, description, spec, rank, text_type, root, rows, table, resolve, shards)
    if not task.paths:
        raise TreeclipError(f"{spec}: the task has no usable images" + (f" (first problem: {task.problems[0]})" if task.problems else ""))
    return task


def task_from_rows(name: str, root: Path, rows: list[dict[str, str]], where: Path) -> Task:
    """A task of named classes (no taxonomy, nothing resolved) from rows with `path`
    (under `root`, which it may not escape) and `name`: images a user labelled by hand
    (`treeclip fit`). `where` names the source in problem lines."""
    return _build(name, "", where, "species", AS_GIVEN, root, rows, None, False, None)


# -- building -----------------------------------------------------------------------
def _image_path(root: Path, path: str, where: str) -> str:
    """A catalog path (`/` or Windows `\\` separators) as the normalised path under
    `root`; InputError when it is empty or escapes. Links inside `root` are followed
    later, when the image is read: a task folder may link to the user's image store."""
    full = safe_join(root, path.replace("\\", "/"), what=f"{where}: path {path!r}", follow_links=False)
    return Path(os.path.relpath(full, os.path.abspath(root))).as_posix()


def _build(name: str, description: str, spec: Path, rank: str, text_type: str, root: Path,
           rows: list[dict[str, str]], table: dict[str, Taxon] | None, resolve: bool,
           shards: dict[str, list[str]] | None) -> Task:
    problems: list[str] = []
    kept: list[tuple[str, Taxon | None, str, str]] = []  # path, taxon, given name, split
    for row in rows:
        where = row.get("_where", str(spec))
        rel = row.get("path", "")
        if shards is None:  # a shard task's paths are sample keys, not files
            try:
                rel = _image_path(root, rel, where)
            except InputError as e:
                problems.append(str(e))
                continue
        taxon = taxon_from_row(row) if any(row.get(r) for r in RANKS) else None
        given = row.get("name", "")
        if taxon is None and given and table is not None:
            taxon = table.get(given)
        if taxon is None and not given:
            problems.append(f"{where}: row has neither ranks nor a class name")
            continue
        kept.append((rel, taxon, given, row.get("split", "")))

    if resolve:
        unknown = sorted({g for _, t, g, _ in kept if t is None})
        found = resolve_names(unknown) if unknown else {}
        kept = [(p, t if t is not None else found.get(g), g, s) for p, t, g, s in kept]

    # A class is the name the dataset gives it, when it gives one (two names that
    # resolve to one taxon stay two classes, as the dataset defines them); otherwise
    # the taxon at the class rank.
    class_of: dict[tuple, TaskClass] = {}
    image_class: list[tuple] = []
    paths, taxa, splits = [], [], []
    for rel, taxon, given, split in kept:
        taxon = taxon if taxon is not None and not taxon.is_empty else None
        at = taxon.at(rank) if taxon is not None and taxon[rank] else None
        if given:
            key = ("name", given)
            if key not in class_of or (class_of[key].taxon is None and at is not None):
                class_of[key] = TaskClass(given, at)
        elif at is None:
            problems.append(f"{rel}: taxon {taxon} is not named at the class rank {rank}")
            continue
        else:
            key = ("taxon",) + at.lineage
            if key not in class_of or (not class_of[key].taxon.common and at.common):
                class_of[key] = TaskClass(at.scientific_name, at)
        image_class.append(key)
        paths.append(rel)
        taxa.append(taxon)
        splits.append(split)
    order = sorted(class_of, key=lambda k: (k[0], [s.lower() for s in k[1:]], k[1:]))
    index = {k: i for i, k in enumerate(order)}
    return Task(name=name, description=description, spec_path=spec, rank=rank, text_type=text_type,
                root=root, paths=paths, labels=np.asarray([index[k] for k in image_class], dtype=np.int64),
                classes=[class_of[k] for k in order], taxa=taxa, splits=splits, shards=shards, problems=problems)


def iter_shard_images(task: Task) -> Iterator[tuple[int, bytes | None, str]]:
    """(image index, JPEG bytes or None, problem) for a dataset task, read shard by shard."""
    from treeclip.data.shards import iter_shard_images as shard_images

    position = {p: i for i, p in enumerate(task.paths)}
    for shard, keys in (task.shards or {}).items():
        for key, data, problem in shard_images(shard, (k for k in keys if k in position)):
            yield position[key], data, problem


def describe(task: Task) -> dict:
    """A JSON-able summary for reports."""
    return {"name": task.name, "description": task.description, "spec": str(task.spec_path),
            "rank": task.rank, "n_images": len(task), "n_classes": task.n_classes,
            "text_type": task.text_type, "problems": len(task.problems)}
