"""Meta's PDQ perceptual hash (through the `pdqhash` bindings) for near-duplicate detection.

PDQ (facebook/ThreatExchange, `pdq/`) takes an image's luminance down to 64 x 64 with Jarosz
(tent) filters, keeps the 16 x 16 lowest frequencies of its 2-D DCT and thresholds them at
their median: 256 bits that survive re-encoding, resizing and colour shifts, but not crops
or mirroring. Distances are Hamming distances between two hashes; BioCLIP 2 removed
near duplicates of its evaluation images from training at a PDQ distance of 10, our
`dedup.DEFAULT_THRESHOLD`. The hex form is the one of Meta's reference implementation (64
hex digits, most significant bit first), so the hashes compare with other PDQ tools'.

An image is converted to RGB first (`images.to_rgb`: palette, alpha, 16-bit and float modes
as the decoder converts them) and, when a side exceeds `MAX_SIDE` (256), reduced to
`MAX_SIDE` px on its long side by area averaging, for two reasons:
- the same photo must reach PDQ at the same resolution however it is stored: the builder
  decodes a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's draft) as long as both sides stay
  >= max(build size, `DECODE_MIN`), a PNG at full size. Without the cap a q90 JPEG copy
  of a 1024 px PNG was 6-14 bits from it (hashed at 256 vs 512 px); with it, 0-2;
- speed and memory: `pdqhash` filters every pixel of its input in float64 (a 12 MP photo:
  ~1 s and ~320 MB of temporaries), for a 64 x 64 result; at <= 256 px a hash takes ~1 ms.
PDQ itself low-passes to 64 x 64 (Jarosz filters), so 256 px keeps 4x what it uses.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_BITS = 256
MAX_SIDE = 256
"""Images are hashed at most this many px on their long side (see the module docstring)."""
MIN_QUALITY = 50
"""PDQ quality below which Meta advises not to match on a hash (flat or tiny images)."""
DECODE_MIN = 224
"""The builder decodes images it hashes with both sides >= max(build size, this)."""


def _capped(img: Image.Image) -> Image.Image:
    """`img` in RGB, at most MAX_SIDE px on a side (the image itself when it already is)."""
    from treeclip.data.images import to_rgb

    img = to_rgb(img)
    w, h = img.size
    if max(w, h) > MAX_SIDE:
        scale = MAX_SIDE / max(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    return img


def phash_quality(img: Image.Image) -> tuple[np.ndarray, int]:
    """(the hash as 32 bytes, uint8, bits packed big-endian; PDQ's quality 0-100). Meta
    calls a quality under 50 too little information to match on (flat or tiny images:
    an image under ~4 px hashes to all zeros, quality 0)."""
    import pdqhash

    bits, quality = pdqhash.compute(np.asarray(_capped(img), dtype=np.uint8))
    return np.packbits(np.asarray(bits, dtype=np.uint8)), int(quality)


def phash_bits(img: Image.Image) -> np.ndarray:
    """The PDQ hash as 32 bytes (uint8), bits packed big-endian."""
    return phash_quality(img)[0]


def phash(img: Image.Image) -> str:
    """The 256-bit PDQ hash of `img` as 64 hex digits."""
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

    PDQ is not crop-robust (an 8% crop per side lands 6-14 bits away; a crop a pixel or
    two off an indexed one, at 256 px, 8-18), so evaluation images are indexed with these
    50 crops too: a training copy cropped like one of them is caught (docs/data.md).
    """
    img = _capped(img)  # once, not once per crop
    w, h = img.size
    out = [phash(img)]
    for s in CROP_SCALES:
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        for ax, ay in _ANCHORS:
            x0, y0 = round((w - cw) * ax), round((h - ch) * ay)
            out.append(phash(img.crop((x0, y0, x0 + cw, y0 + ch))))
    return out
