"""Camera-trap and light-trap images: classify each detection of a MegaDetector batch
output on its crop, and write the classifications back in MegaDetector's format.

MegaDetector's batch output (its documented JSON) is:

    {"images": [{"file": "site1/IMG_0001.JPG",
                 "detections": [{"category": "1", "conf": 0.93, "bbox": [x, y, w, h]}, ...]}, ...],
     "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "info": {...}}

with `bbox` normalised to the image (top-left x, y, width, height in [0, 1]). Each kept
detection (`conf >= min_conf`, category among `categories`) becomes one input, its crop
(the box grown by `margin` of its size on each side, clipped to the image); an image with
no kept detection becomes one row with an empty classification. A detection's key is
`<file>#<index>` (its index among the image's detections in the JSON, whatever the
threshold), so outputs resume per detection. `file` paths are relative to `root`
(default: the JSON's folder) and may not climb out of it; absolute paths are taken as
they are.

`write_classified` writes the JSON back with `classifications` (`[[category id,
score], ...]`, best first) on each classified detection and a `classification_categories`
table: the format Timelapse and MegaDetector's own tools read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from treeclip.errors import TreeclipError
from treeclip.fsutil import write_text_atomic
from treeclip.predict.output import row_key
from treeclip.runtime.images import Crop, Item

DETECTION_COLUMNS = ("detection_id", "bbox", "detection_conf", "detection_category")
"""The columns a detection adds to a prediction row, after `file_name`."""


@dataclass(frozen=True)
class DetectionOptions:
    """Which detections to classify and how much context each crop keeps."""

    path: str
    root: str | None = None
    min_conf: float = 0.2
    categories: tuple[str, ...] = ("animal",)
    margin: float = 0.1
    md_out: str | None = None  # where the classified MegaDetector JSON goes (after the run)

    def __post_init__(self) -> None:
        if not 0 <= self.min_conf <= 1:
            raise TreeclipError(f"--min-conf {self.min_conf}: expected a confidence in [0, 1]")
        if not 0 <= self.margin <= 1:
            raise TreeclipError(f"--crop-margin {self.margin}: expected a fraction of the box in [0, 1]")
        object.__setattr__(self, "categories", tuple(c.strip() for c in self.categories if c.strip()))
        if not self.categories:
            raise TreeclipError("--categories: name at least one detection category (e.g. animal)")

    def identity(self) -> dict:
        """What the rows depend on (the classified JSON's path does not)."""
        from treeclip.predict.runs import file_identity

        return {"file": file_identity(self.path), "root": self.root, "min_conf": self.min_conf,
                "categories": list(self.categories), "margin": self.margin}

    def with_columns(self, columns: Sequence[str]) -> list[str]:
        """An output's columns with the detection columns after `file_name`."""
        return [columns[0], *DETECTION_COLUMNS, *columns[1:]]


@dataclass
class Detections:
    """What a MegaDetector file asks to classify: the crops as inputs, each detection's
    columns by key, the images with no kept detection, and every output key (detections
    and empty images) in the JSON's order."""

    items: list[Item] = field(default_factory=list)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)


def read_detections(options: DetectionOptions) -> Detections:
    """The kept detections of a MegaDetector batch output as crop inputs (see the module doc)."""
    data = _load(options.path)
    names = data.get("detection_categories") or {}
    root = Path(options.root) if options.root else Path(options.path).parent
    wanted = {c.lower() for c in options.categories}
    found = Detections()
    for entry in data["images"]:
        file = str(entry.get("file", ""))
        kept = []
        for k, det in enumerate(entry.get("detections") or []):
            category = str(names.get(str(det.get("category")), det.get("category")))
            if _kept(det, category, wanted, options.min_conf):
                kept.append((k, det, category))
        if not kept:
            found.empty.append(file)
            found.order.append(file)
            continue
        path = _image_path(root, file)
        for k, det, category in kept:
            key = f"{file}#{k}"
            box = tuple(float(v) for v in det["bbox"])
            found.items.append(Item(key, Crop(path, box, options.margin)))  # type: ignore[arg-type]
            found.columns[key] = {"file_name": file, "detection_id": k, "bbox": ",".join(f"{v:.4f}" for v in box),
                                  "detection_conf": float(det["conf"]), "detection_category": category}
            found.order.append(key)
    return found


def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TreeclipError(f"{path}: no such MegaDetector file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TreeclipError(f"{path}: not a MegaDetector JSON file ({str(err)[:100]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise TreeclipError(f"{path}: not a MegaDetector batch output (no `images` list)")
    return data


def _kept(det: Any, category: str, wanted: set[str], min_conf: float) -> bool:
    """Whether a detection is classified: a valid box, confident enough, a wanted category."""
    try:
        conf = float(det["conf"])
        box = [float(v) for v in det["bbox"]]
    except (KeyError, TypeError, ValueError):
        return False
    good_box = len(box) == 4 and all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0
    return good_box and conf >= min_conf and category.lower() in wanted


def _image_path(root: Path, file: str) -> str:
    """`file` below `root` (absolute paths as they are); a relative path may not climb out
    of `root` (it is then kept as is, so its row says the file cannot be read)."""
    from treeclip.data.paths import safe_join
    from treeclip.errors import InputError

    if os.path.isabs(file):
        return file
    try:
        return str(safe_join(root, file))
    except InputError:
        return f"{file} (outside {root})"


def detection_rows(rows: Iterable[dict], detections: Detections) -> list[dict]:
    """Rows of crop inputs as output rows: the image's `file_name` and the detection's
    columns instead of the crop's key."""
    out = []
    for row in rows:
        extra = detections.columns.get(row["file_name"])
        out.append({**row, **extra} if extra else row)
    return out


def empty_rows(files: Sequence[str]) -> list[dict]:
    """One row per image with no detection to classify (its classification left empty)."""
    return [{"file_name": f} for f in files]


def answer_name(row: dict) -> str:
    """The name a row answers with: `classification` (custom labels, heads), else the
    deepest taxon name it has (`Genus epithet` at species rank)."""
    if row.get("classification"):
        return str(row["classification"])
    if row.get("species_epithet") or (row.get("species") and row.get("genus")):
        return str(row.get("species") or f"{row['genus']} {row['species_epithet']}")
    for rank in ("genus", "family", "order", "class", "phylum", "kingdom"):
        if row.get(rank):
            return str(row[rank])
    return ""


def write_classified(md_path: str, rows: Sequence[dict], out: str | os.PathLike) -> int:
    """Write MegaDetector's JSON with each classified detection's `classifications`
    (`[[category id, score], ...]`, best first, as `rows` rank them) and the
    `classification_categories` table; returns how many detections got classifications."""
    data = _load(md_path)
    by_key: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        if row.get("detection_id") in (None, "") or row.get("error") or row.get("score") in (None, ""):
            continue
        by_key.setdefault(row_key(row), []).append((answer_name(row), float(row["score"])))
    categories: dict[str, str] = {}
    ids: dict[str, str] = {}
    n = 0
    for entry in data["images"]:
        for k, det in enumerate(entry.get("detections") or []):
            answers = by_key.get(f"{entry.get('file', '')}#{k}")
            if not answers:
                continue
            for name, _ in answers:
                if name not in ids:
                    ids[name] = str(len(ids))
                    categories[ids[name]] = name
            det["classifications"] = [[ids[name], round(score, 4)] for name, score in answers]
            n += 1
    data["classification_categories"] = categories
    data.setdefault("info", {})["classifier"] = "treeclip"
    write_text_atomic(Path(out), json.dumps(data, indent=1) + "\n")
    return n
