"""Deduplication: exact duplicates inside the training set, and exact or near duplicates
of evaluation images (a perceptual hash within a Hamming threshold) removed from training.

Every image is hashed the way the builder sees it (`source_image_hashes`): the sha256 of its
decoded, resized pixels (exact duplicates, whatever the file format) and the 256-bit PDQ
perceptual hash (Meta's, `treeclip.data.phash`) of the decoded image (near duplicates:
re-encoded, resized). PDQ is not robust to crops, so evaluation images are indexed with
crops of themselves too (see `phash_variants`): slightly cropped copies are caught as well.
The search is one matrix product per block of training images.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from treeclip.data.phash import HASH_BITS, hex_to_bits
from treeclip.errors import InputError, TreeclipError
from treeclip.log import get_logger, progress_bar

log = get_logger(__name__)

DEFAULT_THRESHOLD = 10
"""PDQ Hamming distance (of 256 bits) at or below which a training image is a near
duplicate: BioCLIP 2's threshold for removing evaluation images from its training data.
Measured (docs/data.md): re-encoded or moderately resized copies mostly <= 8, other photos
of the same species >= 48, unrelated images >= 90."""

_BLOCK = 4096
_REF_BLOCK = 32768


@dataclass
class ExclusionIndex:
    """Hashes of evaluation images (each with its crop variants); `match_many` finds, for
    training images, the closest exact or near duplicate."""

    threshold: int = DEFAULT_THRESHOLD
    labels: list[str] = field(default_factory=list)
    _sha: dict[str, int] = field(default_factory=dict)
    _owner: list[int] = field(default_factory=list)
    _hashes: list[str] = field(default_factory=list)
    _signs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, label: str, sha256: str, phashes: list[str]) -> None:
        """Index one evaluation image: its pixel sha256 and its perceptual hash(es)."""
        i = len(self.labels)
        self.labels.append(label)
        self._sha.setdefault(sha256, i)
        self._hashes += phashes
        self._owner += [i] * len(phashes)
        self._signs = None

    def _packed(self) -> np.ndarray:
        if self._signs is None:
            self._signs = hex_to_bits(self._hashes)  # (n, 32) uint8, unpacked block by block
        return self._signs

    @staticmethod
    def _pm1(packed: np.ndarray) -> np.ndarray:
        # Hamming distance of +-1 vectors is (bits - a.b) / 2, so a BLAS matmul does the search.
        return np.unpackbits(packed, axis=1).astype(np.float32) * 2 - 1

    def match_many(self, sha256s: list[str], phashes: list[str]) -> list[tuple[str, str, int] | None]:
        """For each training image: (kind, evaluation image, distance) or None. kind is
        `exact` (same decoded pixels) or `near` (hash distance <= threshold)."""
        out: list[tuple[str, str, int] | None] = [None] * len(sha256s)
        if not self.labels:
            return out
        ref = self._packed()
        for start in range(0, len(phashes), _BLOCK):
            q = self._pm1(hex_to_bits(phashes[start:start + _BLOCK]))
            best_d = np.full(len(q), HASH_BITS + 1, dtype=np.float32)
            best_i = np.zeros(len(q), dtype=np.int64)
            for r0 in range(0, len(ref), _REF_BLOCK):  # bounded memory for big evaluation sets
                dist = (HASH_BITS - q @ self._pm1(ref[r0:r0 + _REF_BLOCK]).T) / 2
                i = dist.argmin(axis=1)
                d = dist[np.arange(len(q)), i]
                better = d < best_d
                best_d[better], best_i[better] = d[better], i[better] + r0
            for j in np.flatnonzero(best_d <= self.threshold + 0.5):
                out[start + j] = ("near", self.labels[self._owner[best_i[j]]], int(round(float(best_d[j]))))
        for j, sha in enumerate(sha256s):
            if sha in self._sha:
                out[j] = ("exact", self.labels[self._sha[sha]], 0)
        return out

    def match(self, sha256: str, phash_hex: str) -> tuple[str, str, int] | None:
        """`match_many` for one image."""
        return self.match_many([sha256], [phash_hex])[0]


def source_image_hashes(path: str, *, size: int, resize_mode: str = "crop", max_pixels: int | None = None,
                        name: str | None = None, variants: bool = False) -> dict:
    """Hashes of one source image file as the builder would store it (raises InputError):
    `sha256` of the pixels resized to `size`, `phash` of the decoded image, and with
    `variants` the crop hashes `phashes`. (A stored sample's own hashes:
    `treeclip.data.dataset.stored_image_hashes`.)"""
    from treeclip.data.images import MAX_PIXELS, decode_image, pixel_sha256, resize_image
    from treeclip.data.phash import DECODE_MIN, MIN_QUALITY, phash, phash_quality, phash_variants

    img = decode_image(path, name=name, max_pixels=max_pixels or MAX_PIXELS, draft_size=max(size, DECODE_MIN))
    out = {"sha256": pixel_sha256(resize_image(img, size, mode=resize_mode)), "phash": phash(img)}
    if variants:
        # a flat or tiny evaluation image has too little structure for its hash to mean
        # anything (PDQ quality < MIN_QUALITY; all such images hash alike): exact matches only
        out["phashes"] = phash_variants(img) if phash_quality(img)[1] >= MIN_QUALITY else []
    return out


# -- evaluation sets ---------------------------------------------------------------------


def _task_images(task_dir: Path) -> tuple[Path, Path | None]:
    """(catalog, root) of a task dir's task.toml."""
    import tomllib

    toml = task_dir / "task.toml"
    try:
        spec = tomllib.loads(toml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TreeclipError(f"{toml}: unreadable task spec ({' '.join(str(e).split())[:100]})") from None
    images = spec.get("images", {})
    if "catalog" not in images:
        raise TreeclipError(f"{toml}: [images] needs a catalog")
    root = string.Template(str(images.get("root", "."))).safe_substitute(os.environ)
    return task_dir / images["catalog"], task_dir / root


def exclusion_paths(spec: str) -> Iterator[tuple[str, str]]:
    """(label, image path) of every usable image of an evaluation set: a task dir with
    task.toml, an image folder, a CSV/Parquet catalog (`FILE::ROOT`) or an iNat JSON."""
    from treeclip.data import sources

    path_str, root = sources.split_root(spec)
    path = Path(path_str)
    if path.is_dir() and (path / "task.toml").is_file():
        catalog, task_root = _task_images(path)
        items = sources.read_catalog(catalog, task_root)
    elif path.is_dir():
        items = sources.read_image_folder(path)
    elif path.suffix.lower() == ".json":
        items = sources.read_inat_json(path, root)
    elif path.is_file():
        items = sources.read_catalog(path, root)
    else:
        raise TreeclipError(f"{spec}: no such evaluation set (a task dir, image folder, catalog or iNat JSON)")
    for item in items:
        if item.error:
            log.warning(f"exclude set: {item.error}")
            continue
        yield item.path, item.path


def _hash_one(args: tuple[str, str, int, str, int | None]) -> tuple[str, dict | str]:
    label, path, size, mode, max_pixels = args
    try:
        return label, source_image_hashes(path, size=size, resize_mode=mode, max_pixels=max_pixels, variants=True)
    except InputError as e:
        return label, str(e)


def build_exclusion_index(specs: Iterable[str], *, size: int, resize_mode: str = "crop",
                          threshold: int = DEFAULT_THRESHOLD, max_pixels: int | None = None,
                          pool=None, progress: bool = True) -> ExclusionIndex:
    """Hash every image of the evaluation sets `specs` (in `pool` when given)."""
    index = ExclusionIndex(threshold=threshold)
    jobs = [(label, p, size, resize_mode, max_pixels) for s in specs for label, p in exclusion_paths(s)]
    if not jobs:
        return index
    results = pool.imap(_hash_one, jobs, chunksize=16) if pool is not None else map(_hash_one, jobs)
    results = progress_bar(len(jobs), iterable=results, desc="hashing evaluation images", enabled=progress)
    for label, res in results:
        if isinstance(res, str):
            log.warning(f"exclude set: skipped {res}")
        else:
            index.add(label, res["sha256"], res["phashes"])
    return index


def dedup_report_row(kind: str, other: str, distance: int | None = None) -> str:
    """The one-line reason recorded for a removed image."""
    if kind == "train-exact":
        return f"exact duplicate (same decoded pixels) of training image {other}"
    if kind == "exact":
        return f"exact duplicate of evaluation image {other}"
    return f"near duplicate (phash distance {distance}) of evaluation image {other}"
