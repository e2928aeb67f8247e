"""Safe image decoding: every colour mode, EXIF orientation, and every bad input refused
with a one-line reason that names the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from treeclip.data.images import decode_image, encode_jpeg, pixel_sha256, resize_image
from treeclip.errors import InputError


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(_encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    base = Image.linear_gradient("L").resize((16, 16))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)  # mode I;16
        fmt = "PNG"
    elif mode in ("I", "F"):
        img = base.convert(mode)
        fmt = "TIFF"
    elif mode == "CMYK":
        img = Image.merge("RGB", [base, base, base]).convert("CMYK")
        fmt = "JPEG"
    elif mode == "P":
        img = base.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
        fmt = "PNG"
    else:
        img = base.convert(mode)
        fmt = "PNG"
    out = decode_image(_encode(img, fmt), name=f"x.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == (16, 16)
    arr = np.asarray(out, dtype=np.int32)
    # the gradient survives: dark at the top, bright at the bottom (not clipped white)
    assert arr[0].mean() < 60 and arr[-1].mean() > 190


def test_palette_transparency_composited():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    out = decode_image(_encode(img, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied():
    img = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"just some text, not an image", "not an image"),
        (None, "truncated"),
        (None, "corrupt"),
    ],
)
def test_bad_bytes_refused_with_reason(data, reason):
    good = _encode(Image.linear_gradient("L").convert("RGB").resize((64, 64)), "JPEG")
    if reason == "truncated":
        data = good[: len(good) // 2]
    elif reason == "corrupt":
        data = good[:20] + bytes(200) + good[220:]  # header kept, tables/scan data zeroed
    with pytest.raises(InputError) as e:
        decode_image(data, name="bad.jpg")
    msg = str(e.value)
    assert msg.startswith("bad.jpg: ") and "\n" not in msg
    if reason != "corrupt":
        assert reason in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="directory"):
        decode_image(tmp_path)


def test_pixel_cap_refuses_bomb_before_decoding():
    # a 20000 x 20000 PNG header (400 Mpx) compresses to a few hundred kB of zeros
    big = _encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(InputError, match="too many pixels"):
        decode_image(big, name="bomb.png")
    small = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(InputError, match="too many pixels"):
        decode_image(small, name="s.png", max_pixels=5000)


def test_jpeg_draft_decodes_smaller_but_not_below_request():
    img = Image.linear_gradient("L").convert("RGB").resize((800, 600))
    data = _encode(img, "JPEG")
    full = decode_image(data)
    fast = decode_image(data, draft_size=64)
    assert full.size == (800, 600)
    assert fast.size[0] < 800 and min(fast.size) >= 64


@pytest.mark.parametrize("mode, size", [("crop", (32, 32)), ("shorter", (48, 32)), ("stretch", (32, 32))])
def test_resize_modes(mode, size):
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    assert resize_image(img, 32, mode=mode).size == size


def test_encode_roundtrip_and_pixel_hash():
    img = Image.linear_gradient("L").convert("RGB").resize((32, 32))
    jpg = encode_jpeg(img)
    assert jpg[:2] == b"\xff\xd8" and encode_jpeg(img) == jpg
    a = decode_image(jpg)
    assert pixel_sha256(a) == pixel_sha256(decode_image(jpg))
    assert pixel_sha256(a) != pixel_sha256(a.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
