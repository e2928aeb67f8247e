"""A fuzz test of the shared decoder: a few hundred mutated JPEG, PNG, GIF, WebP and TIFF
files (seeded byte flips, truncations, splices, zeroed runs, and header edits that claim
other sizes, depths and layouts), made on the fly. Each one decodes or is refused with
one `InputError` line naming the file; nothing else is raised, nothing crashes the
process, and memory stays bounded (peak RSS growth, measured in a fresh subprocess)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data_helpers import scene

pytestmark = pytest.mark.faults

MUTANTS_PER_BASE = 36
MAX_RSS_GROWTH_MB = 400
"""Peak RSS growth allowed over the whole corpus. Measured with the caps: 135 MB, all of it
one WebP mutant whose header claims 9772 x 4096 pixels (Pillow allocates the 40 M pixel
frame before it finds the data broken; under the pixel cap, so allowed). Without the
aspect and resize caps, mutants claiming 65535 x 3 pixels would be resized to 224 x 4.9 M
pixels: gigabytes."""

# Decodes every file listed in argv[1] and writes one JSON result per file to argv[2]:
# a fresh process, so a crash shows as its exit status and RSS growth is the corpus's own.
RUNNER = r"""
import json, os, resource, sys
from treeclip.data.images import decode_image, resize_image
from treeclip.errors import InputError

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0

paths = open(sys.argv[1], encoding="utf-8").read().splitlines()
for p in paths[:10]:  # warm up: the codecs' own first-use allocations are not growth
    try:
        resize_image(decode_image(p, draft_size=224), 224)
    except InputError:
        pass
start, start_fds, results, worst = rss_mb(), fds(), [], (0.0, "")
for i, path in enumerate(paths):
    before = rss_mb()
    try:
        img = decode_image(path, draft_size=(224, None)[i % 2])
        small = resize_image(img, 224)
        results.append({"path": path, "ok": f"{img.width}x{img.height} {img.mode} -> {small.width}x{small.height}"})
    except InputError as e:
        results.append({"path": path, "refused": str(e)})
    except BaseException as e:
        results.append({"path": path, "other": f"{type(e).__name__}: {e}"})
    if rss_mb() - before > worst[0]:
        worst = (rss_mb() - before, path)
json.dump({"results": results, "start_mb": start, "peak_mb": rss_mb(), "worst": worst,
           "fd_growth": fds() - start_fds}, open(sys.argv[2], "w", encoding="utf-8"))
"""


# -- the corpus -------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def base_files() -> dict[str, bytes]:
    """Valid files of each format and a few of their variants (64 x 48 scenes)."""
    img = scene(3, 64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "baseline.jpg": _encode(img, "JPEG", quality=85, exif=exif.tobytes()),
        "progressive.jpg": _encode(img.convert("L"), "JPEG", progressive=True),
        "rgba.png": _encode(img.convert("RGBA"), "PNG"),
        "palette.png": _encode(img.convert("P"), "PNG", transparency=0),
        "anim.gif": _encode(img.convert("P"), "GIF", save_all=True,
                            append_images=[scene(4, 64, 48).convert("P")], duration=50),
        "lossy.webp": _encode(img, "WEBP", quality=70),
        "lossless.webp": _encode(img.convert("RGBA"), "WEBP", lossless=True),
        "raw.tif": _encode(img, "TIFF"),
        "lzw16.tif": _encode(Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257), "TIFF",
                             compression="tiff_lzw"),
    }


_SIZES = (0, 1, 2, 3, 7, 255, 256, 4096, 32767, 65535)


def _size(rng: np.random.Generator) -> int:
    return int(rng.choice(_SIZES)) if rng.random() < 0.7 else int(rng.integers(0, 1 << 16))


def _png_header(data: bytearray, rng: np.random.Generator) -> None:
    """New width, height, bit depth or colour type in IHDR, with its CRC fixed (so the
    decoder gets past the checksum to the values)."""
    field = int(rng.integers(0, 4))
    if field < 2:
        data[16 + 4 * field:20 + 4 * field] = struct.pack(">I", _size(rng) * int(rng.choice([1, 1, 31])))
    else:
        data[24 + field - 2] = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 16, 255]))
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))


def _jpeg_header(data: bytearray, rng: np.random.Generator) -> None:
    """New height, width, component count or precision in the frame header (SOF0/SOF2)."""
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    field = int(rng.integers(0, 4))
    if field < 2:
        data[at + 5 + 2 * field:at + 7 + 2 * field] = struct.pack(">H", _size(rng))
    elif field == 2:
        data[at + 9] = int(rng.choice([0, 2, 4, 5, 255]))
    else:
        data[at + 4] = int(rng.choice([0, 1, 12, 16, 255]))


def _gif_header(data: bytearray, rng: np.random.Generator) -> None:
    """New logical screen size, or a first frame placed or sized elsewhere."""
    at = 6 if rng.random() < 0.5 else data.find(b"\x2c") + 1 + 2 * int(rng.integers(0, 4)) - 6
    at = max(at, 6)
    data[at:at + 2] = struct.pack("<H", _size(rng))


def _webp_header(data: bytearray, rng: np.random.Generator) -> None:
    """New frame size (lossy: after the start code; lossless: the packed 14-bit fields),
    or a RIFF length that lies."""
    if rng.random() < 0.25:
        data[4:8] = struct.pack("<I", int(rng.integers(0, 1 << 32)))
        return
    at = data.find(b"\x9d\x01\x2a")
    if at >= 0:
        data[at + 3:at + 7] = struct.pack("<HH", _size(rng), _size(rng))
    else:  # VP8L: signature byte 0x2f, then width-1 and height-1 in 14 bits each
        at = data.find(b"VP8L") + 9
        bits = (_size(rng) % (1 << 14)) | ((_size(rng) % (1 << 14)) << 14) | (int(rng.integers(0, 16)) << 28)
        data[at:at + 4] = struct.pack("<I", bits)


_TIFF_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284)


def _tiff_header(data: bytearray, rng: np.random.Generator) -> None:
    """A new value for one of the first IFD's layout tags (size, depth, compression,
    photometric, strips, samples per pixel, planar config)."""
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd:ifd + 2])[0]
    entries = [ifd + 2 + 12 * i for i in range(count)]
    tagged = [e for e in entries if struct.unpack("<H", data[e:e + 2])[0] in _TIFF_TAGS]
    e = int(rng.choice(tagged))
    value = _size(rng) if rng.random() < 0.8 else int(rng.integers(0, 1 << 32))
    kind = struct.unpack("<H", data[e + 2:e + 4])[0]
    data[e + 8:e + 12] = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value & 0xFFFF, 0)


_HEADER_EDITS = {".png": _png_header, ".jpg": _jpeg_header, ".gif": _gif_header, ".webp": _webp_header,
                 ".tif": _tiff_header}


def mutate(data: bytes, ext: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded mutation of `data`: (its kind, the mutated bytes)."""
    out = bytearray(data)
    kind = str(rng.choice(["flip", "flip", "truncate", "header", "header", "splice", "zero"]))
    if kind == "flip":
        for at in rng.integers(0, len(out), int(rng.integers(1, 17))):
            out[at] ^= int(rng.integers(1, 256))
    elif kind == "truncate":
        out = out[:int(rng.integers(0, len(out)))]
    elif kind == "header":
        for _ in range(int(rng.integers(1, 3))):
            _HEADER_EDITS[ext](out, rng)
    elif kind == "splice":  # a block repeated or random bytes put in
        at, n = int(rng.integers(0, len(out))), int(rng.integers(1, 256))
        block = out[at:at + n] if rng.random() < 0.5 else bytearray(rng.integers(0, 256, n, dtype=np.uint8))
        out[at:at] = block
    else:
        at = int(rng.integers(0, len(out)))
        out[at:at + int(rng.integers(1, 128))] = bytes(min(len(out) - at, 127))
    return kind, bytes(out)


def write_corpus(folder: Path, per_base: int = MUTANTS_PER_BASE, seed: int = 2024) -> tuple[list[Path], list[Path]]:
    """(the valid files, the mutants) under `folder`, the same for the same seed."""
    folder.mkdir(parents=True, exist_ok=True)
    bases, mutants = [], []
    for b, (name, data) in enumerate(sorted(base_files().items())):
        stem, ext = name.rsplit(".", 1)
        (folder / name).write_bytes(data)
        bases.append(folder / name)
        for i in range(per_base):
            kind, bad = mutate(data, f".{ext}", np.random.default_rng([seed, b, i]))
            path = folder / f"{stem}-{i:02d}-{kind}.{ext}"
            path.write_bytes(bad)
            mutants.append(path)
    return bases, mutants


# -- the test ---------------------------------------------------------------------------


def test_corpus_is_seeded_and_mutates_every_base(tmp_path):
    bases, mutants = write_corpus(tmp_path / "a", per_base=8)
    again = write_corpus(tmp_path / "b", per_base=8)[1]
    assert [p.read_bytes() for p in mutants] == [p.read_bytes() for p in again]
    originals = {p.stem: p.read_bytes() for p in bases}
    assert all(m.read_bytes() != originals[m.stem.rsplit("-", 2)[0]] for m in mutants)
    assert {m.stem.rsplit("-", 1)[1] for m in mutants} >= {"flip", "truncate", "header"}


def test_decoder_survives_mutated_files(tmp_path):
    bases, mutants = write_corpus(tmp_path / "corpus")
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(map(str, bases + mutants)) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(listing), str(tmp_path / "results.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the decoder crashed the process (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    results = {r["path"]: r for r in report["results"]}
    assert len(results) == len(bases) + len(mutants) == 9 * (MUTANTS_PER_BASE + 1)
    others = [f"{p}: {r['other']}" for p, r in results.items() if "other" in r]
    assert not others, "not an InputError:\n" + "\n".join(others)
    assert all("ok" in results[str(p)] for p in bases), [results[str(p)] for p in bases]
    refused = {p: r["refused"] for p, r in results.items() if "refused" in r}
    bad_lines = [m for p, m in refused.items() if not m.startswith(f"{p}: ") or "\n" in m or len(m) > len(p) + 200]
    assert not bad_lines, bad_lines
    assert len(refused) > len(mutants) // 3  # the mutants are mostly broken, not harmless
    reasons = {m.split(": ", 1)[1].split(" (")[0] for m in refused.values()}
    assert {"truncated image data", "too many pixels", "not an image"} & reasons, reasons
    growth = report["peak_mb"] - report["start_mb"]
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew {growth:.0f} MB (worst: {report['worst']})"
    assert report["fd_growth"] <= 0, "file handles left open"
