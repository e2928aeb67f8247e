"""Tiny images made on the fly for the data tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def scene(seed: int, w: int = 160, h: int = 120) -> Image.Image:
    """A picture with structure (coloured ellipses on a background), distinct per seed."""
    r = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(x) for x in r.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(10):
        x0, y0 = int(r.integers(0, w)), int(r.integers(0, h))
        d.ellipse([x0, y0, x0 + int(r.integers(w // 8, w // 2)), y0 + int(r.integers(h // 8, h // 2))],
                  fill=tuple(int(x) for x in r.integers(0, 255, 3)))
    return img


def save(img: Image.Image, path: Path, fmt: str = "JPEG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def encoded(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


PICA = "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia"
MORUS = "Plantae Tracheophyta Magnoliopsida Rosales Moraceae Morus alba"
AMANITA = "Fungi Basidiomycota Agaricomycetes Agaricales Amanitaceae Amanita muscaria"


def make_folder(root: Path, per_class: int = 4, classes=(PICA, MORUS, AMANITA), seed0: int = 0) -> Path:
    """An image folder with one class folder per taxonomic name."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            save(scene(seed0 + 100 * c + i), root / name / f"img{i}.jpg")
    return root


def zeros_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of `width` x `height` black pixels, written by hand: the
    zero rows compress to almost nothing, so any size costs a few kB and no pixel memory
    (a 2,000,000 x 25 aspect-ratio bomb is about 6 kB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


HEIC = base64.b64decode(  # 64 x 48, red on top of blue, saved by pillow-heif
    "AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAX1tZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAAAAAA"
    "ACJpbG9jAAAAAERAAAEAAQAAAAABoQABAAAAAAAAALkAAAAjaWluZgAAAAAAAQAAABVpbmZlAgAAAAABAABodmMxAAAAAA5waXRt"
    "AAAAAAABAAAA/WlwcnAAAADdaXBjbwAAAHZodmNDAQNwAAAAkAAAAAAAHvAA/P34+AAADwNgAAEAGEABDAH//wNwAAADAJAAAAMA"
    "AAMAHroCQGEAAQAqQgEBA3AAAAMAkAAAAwAAAwAeoCCBBZbq5Ka5uAhoMCAAAAMDIAAAAwAhYgABAAZEAcFzwIkAAAATY29scm5j"
    "bHgAAQANAAaAAAAAFGlzcGUAAAAAAAAAQAAAAEAAAAAoY2xhcAAAAEAAAAABAAAAMAAAAAEAAAAAAAAAAv////AAAAACAAAAEHBp"
    "eGkAAAAAAwgICAAAABhpcG1hAAAAAAAAAAEAAQWBAgMFhAAAAMFtZGF0AAAAtSgBrwY48Je97bfySB///U7Hof0l/on7OpadV8k0"
    "b78yVf/8A7CS9xHv+Vn3E+jr18QufLn43zWkE/7N2hdSt8u1jKsZf1qcG2iROwOXE2Exii2cvwBMw33XqkRuH6UbJoH7+p5U5Ca4"
    "5esU1X06EAxRDKNBJ0ypho9uV3CQgsUS/zVICd4y51yomfx4Xr1l4leeN/8XVLGJUivvp42GDd54DQ6dvpjCR73pMczYzMJgTZ8e"
    "l4A=")
