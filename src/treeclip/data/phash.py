"""A 256-bit perceptual hash (DCT, PDQ-like) for near-duplicate detection.

The image is reduced to 64 x 64 grey levels by area averaging, transformed with a 2-D
DCT-II, and the 16 x 16 lowest frequencies are thresholded at their median: 256 bits
that survive re-encoding, resizing, mild crops and colour shifts. Like PDQ, distances are
Hamming distances between the 256-bit hashes; BioCLIP 2 removed test-set near-duplicates
at a PDQ distance of 10.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

HASH_BITS = 256
_GRID = 64
_LOW = 16


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """The first `_LOW` rows of the orthonormal DCT-II matrix for `_GRID` samples."""
    n = np.arange(_GRID)
    k = np.arange(_LOW)[:, None]
    m = np.cos(np.pi * (2 * n + 1) * k / (2 * _GRID)) * np.sqrt(2.0 / _GRID)
    m[0] /= np.sqrt(2.0)
    return m


def phash_bits(img: Image.Image) -> np.ndarray:
    """The hash as 32 bytes (uint8), bits packed big-endian."""
    grey = np.asarray(img.convert("L").resize((_GRID, _GRID), Image.Resampling.BOX), dtype=np.float64)
    d = _dct_matrix()
    coeffs = d @ grey @ d.T
    return np.packbits((coeffs > np.median(coeffs)).ravel())


def phash(img: Image.Image) -> str:
    """The 256-bit perceptual hash of `img` as 64 hex digits."""
    return phash_bits(img).tobytes().hex()


def hex_to_bits(hexes: list[str]) -> np.ndarray:
    """Hex hashes to an (n, 32) uint8 array."""
    if not hexes:
        return np.zeros((0, HASH_BITS // 8), dtype=np.uint8)
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), HASH_BITS // 8)


def hamming(a: str, b: str) -> int:
    """Hamming distance between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


CROP_SCALES: tuple[float, ...] = (0.98, 0.96, 0.94, 0.92, 0.90, 0.88, 0.86, 0.84, 0.82, 0.80)
_ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))


def phash_variants(img: Image.Image) -> list[str]:
    """Hashes of `img` and of its crops (centre and four corners at each of CROP_SCALES).

    A DCT hash moves a lot under cropping (a 3% crop per side flips ~50 of 256 bits), so
    evaluation images are indexed with these 50 crops too: a training copy cropped to
    >= ~83% of each side (centred or towards any corner) then lands within ~28 bits of one.
    """
    if max(img.size) > 4 * _GRID:
        img = img.copy()
        img.thumbnail((8 * _GRID, 8 * _GRID), Image.Resampling.BOX)
    w, h = img.size
    out = [phash(img)]
    for s in CROP_SCALES:
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        for ax, ay in _ANCHORS:
            x0, y0 = round((w - cw) * ax), round((h - ch) * ay)
            out.append(phash(img.crop((x0, y0, x0 + cw, y0 + ch))))
    return out
