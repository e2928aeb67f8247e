"""Finding the images to classify: files, folders (recursive), glob patterns, a text file
of paths, a CSV column; and PIL images or bytes from Python.

Inputs keep the order given (folders and globs are expanded in sorted order) and each
image appears once. A path that names nothing becomes an input too, so that it gets an
error row ("file not found") like any other unreadable image instead of stopping the run.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from treeclip.data.images import IMAGE_EXTENSIONS
from treeclip.errors import TreeclipError
from treeclip.runtime.images import Item

# A folder scan picks up IMAGE_EXTENSIONS (case-insensitive); explicit files may have any ending.

_GLOB_CHARS = set("*?[")


def scan_folder(folder: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files below `folder`, recursively, sorted; hidden files and folders skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files)
                     if not f.startswith(".") and Path(f).suffix.lower() in extensions)
    return found


def expand(spec: str, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[str]:
    """One command-line argument -> image paths: a folder (recursive), a glob pattern
    (`**` recurses; only image files kept) or a file (kept even if missing)."""
    path = Path(spec)
    if path.is_dir():
        return [str(p) for p in scan_folder(path, extensions)]
    if _GLOB_CHARS & set(spec) and not path.exists():
        return sorted(p for p in glob.glob(spec, recursive=True)
                      if Path(p).is_file() and Path(p).suffix.lower() in extensions)
    return [spec]


def read_path_list(list_file: str | os.PathLike) -> list[str]:
    """A text file with one path per line (blank lines and `#` comments skipped); relative
    paths are relative to the list file's folder."""
    from treeclip.fsutil import read_text

    path = Path(list_file)
    base = path.parent
    out = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line if os.path.isabs(line) else str(base / line))
    return out


def read_csv_column(csv_file: str | os.PathLike, column: str, root: str | os.PathLike | None = None) -> list[str]:
    """The paths in `column` of a CSV; relative ones under `root` (default: the CSV's folder)."""
    from treeclip.fsutil import read_text

    path = Path(csv_file)
    reader = csv.DictReader(io.StringIO(read_text(path)))
    fields = [f.strip() for f in reader.fieldnames or []]
    if column not in fields:
        raise TreeclipError(f"{path}: no column {column!r} (columns: {', '.join(fields) or 'none'})")
    base = Path(root) if root is not None else path.parent
    out = []
    try:
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                out.append(value if os.path.isabs(value) else str(base / value))
    except csv.Error as e:
        raise TreeclipError(f"{path}: malformed CSV at line {reader.line_num} ({e})") from None
    return out


def gather(specs: Iterable[str] = (), *, list_file: str | None = None, csv_file: str | None = None,
           column: str = "file_name", root: str | None = None,
           extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Item]:
    """Every input named on the command line, as `Item`s in order, without repeats."""
    paths: list[str] = []
    for spec in specs:
        paths.extend(expand(spec, extensions))
    if list_file:
        paths.extend(read_path_list(list_file))
    if csv_file:
        paths.extend(read_csv_column(csv_file, column, root))
    return [Item(p, p) for p in dict.fromkeys(paths)]


def as_items(images: Any) -> list[Item]:
    """The Python API's inputs: one or many of path / str / bytes / PIL image / `Item`,
    or a folder or glob (expanded). PIL images are named by their `filename` when they
    were opened from a file, else `image-<i>`; bytes `bytes-<i>`."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image, Item)):
        images = [images]
    items: list[Item] = []
    for i, img in enumerate(images):
        if isinstance(img, Item):
            items.append(img)
        elif isinstance(img, Image.Image):
            items.append(Item(getattr(img, "filename", "") or f"image-{i}", img))
        elif isinstance(img, (bytes, bytearray)):
            items.append(Item(f"bytes-{i}", bytes(img)))
        elif isinstance(img, (str, os.PathLike)):
            items.extend(Item(p, p) for p in expand(os.fspath(img)))
        else:
            raise TypeError(f"cannot classify a {type(img).__name__}; give paths, bytes or PIL images")
    return items


def unique_names(items: Sequence[Item]) -> list[Item]:
    """Items with distinct names (later repeats of a name get `#2`, `#3`)."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        n = seen.get(it.name, 0) + 1
        seen[it.name] = n
        out.append(it if n == 1 else Item(f"{it.name}#{n}", it.source))
    return out
