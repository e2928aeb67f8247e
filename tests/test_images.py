"""Safe image decoding: every colour mode, EXIF orientation, and every bad input refused
with a one-line reason that names the file."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from _data_helpers import HEIC, zeros_png
from treeclip.data import images
from treeclip.data.images import decode_image, encode_jpeg, normalize_image, pixel_sha256, resize_image
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


# -- caps: what a later resize would allocate, bytes read, PIL images from Python ---------


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test: refusals must come from the header."""
    def load(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_aspect_ratio_bomb_refused_from_the_header(no_pixel_decoding):
    # 2,000,000 x 25: 50 M pixels, under the pixel cap, but a shorter-side resize to 224 px
    # would allocate 224 x 17.9 M pixels
    bomb = zeros_png(2_000_000, 25)
    assert len(bomb) < 10_000
    for size in (None, 32, 224):
        with pytest.raises(InputError) as e:
            decode_image(bomb, name="bomb.png", draft_size=size)
        msg = str(e.value)
        assert msg.startswith("bomb.png: too large") and "2000000x25" in msg and "\n" not in msg
    with pytest.raises(InputError, match="too large"):  # standing up, the same
        decode_image(zeros_png(25, 2_000_000), name="tall.png")


def test_aspect_cap_boundary_and_the_resize_cap():
    assert decode_image(zeros_png(1000, 10)).size == (1000, 10)  # 100:1 is allowed
    with pytest.raises(InputError, match="too large to resize .*1010x10"):
        decode_image(zeros_png(1010, 10))
    assert decode_image(zeros_png(1010, 10), max_aspect=200).size == (1010, 10)
    # 6:1 is a fine panorama for a 224 px model; resized to 4096 px it would pass 100 M pixels
    wide = zeros_png(6000, 1000)
    assert decode_image(wide, draft_size=224).size == (6000, 1000)
    with pytest.raises(InputError, match=r"resized to 4096 px .* 100,663,296 pixels > 100,000,000"):
        decode_image(wide, draft_size=4096)
    # a small pixel cap never makes the resize cap refuse ordinary images
    assert decode_image(zeros_png(100, 100), max_pixels=20_000, draft_size=224).size == (100, 100)


def test_file_over_the_byte_cap_is_refused_before_it_is_read(tmp_path):
    import tracemalloc

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(images.MAX_FILE_BYTES + 1)  # sparse: no disk, and reading it would cost 200 MB
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"huge.jpg: file too large \(209,715,201 bytes > 209,715,200\)"):
            decode_image(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # not read
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_encode(Image.new("RGB", (64, 64), (9, 99, 199)), "JPEG"))
    size = photo.stat().st_size
    assert decode_image(photo, max_bytes=size).size == (64, 64)
    with pytest.raises(InputError, match="photo.jpg: file too large"):
        decode_image(photo, max_bytes=size - 1)
    with pytest.raises(InputError, match="upload: file too large"):
        decode_image(photo.read_bytes(), name="upload", max_bytes=size - 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_pipes_and_devices_are_not_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(InputError, match="pipe.jpg: not a regular file"):
        decode_image(fifo)
    if os.path.exists("/dev/zero"):  # endless, and its size says 0
        with pytest.raises(InputError, match="not a regular file"):
            decode_image("/dev/zero")


def _rotated_jpeg() -> Image.Image:
    """A lazily opened 20 x 10 JPEG whose EXIF says: turn 90 degrees to display."""
    img = Image.new("RGB", (20, 10), (0, 200, 0))
    img.paste((200, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return Image.open(io.BytesIO(_encode(img, "JPEG", exif=exif.tobytes())))


def test_pil_images_from_python_get_the_same_normalisation():
    turned = normalize_image(_rotated_jpeg())
    assert turned.mode == "RGB" and turned.size == (10, 20)
    assert turned.size == decode_image(_encode(_rotated_jpeg(), "JPEG", exif=_rotated_jpeg().info["exif"])).size
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert normalize_image(rgba).getpixel((1, 1)) == (255, 255, 255)  # on white, as files are
    i16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert normalize_image(i16).getpixel((0, 0)) == (255, 255, 255)  # not clipped as convert() would
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert normalize_image(cmyk).getpixel((0, 0)) == (255, 0, 0)
    plain = Image.new("RGB", (8, 8), (1, 2, 3))
    assert normalize_image(plain) is plain  # nothing to do: no copy


def test_pil_input_is_not_changed_and_bombs_are_refused_unloaded(no_pixel_decoding):
    lazy = Image.open(io.BytesIO(zeros_png(2_000_000, 25)))
    with pytest.raises(InputError, match="^photo-3: too large to resize"):
        normalize_image(lazy, name="photo-3")
    with pytest.raises(InputError, match="too many pixels"):
        normalize_image(Image.open(io.BytesIO(zeros_png(5000, 5000))), max_pixels=10_000_000)


def test_caller_image_is_left_as_it_was():
    img = _rotated_jpeg()
    img.load()
    before = (img.size, img.mode, img.getexif().get(0x0112), img.tobytes())
    normalize_image(img)
    assert (img.size, img.mode, img.getexif().get(0x0112), img.tobytes()) == before
    pal = Image.new("P", (4, 4))
    normalize_image(pal)
    assert pal.mode == "P"


def test_runtime_decode_item_normalises_pil_images():
    from treeclip.runtime.images import Item, decode_item

    pixels, err = decode_item(Item("field.jpg", _rotated_jpeg()), lambda im: im)
    assert err == "" and pixels.size == (10, 20) and pixels.mode == "RGB"
    pixels, err = decode_item(Item("strip.png", Image.open(io.BytesIO(zeros_png(2_000_000, 25)))), lambda im: im,
                              draft_size=32)
    assert pixels is None and err.startswith("strip.png: too large")


# -- HEIC / HEIF ------------------------------------------------------------------------



def test_heic_without_pillow_heif_is_a_clear_error(monkeypatch, tmp_path):
    assert {".heic", ".heif"} <= images.IMAGE_EXTENSIONS  # a folder scan finds them
    monkeypatch.setattr(images, "heif_supported", lambda: False)
    (tmp_path / "IMG_0001.HEIC").write_bytes(HEIC)
    with pytest.raises(InputError) as e:
        decode_image(tmp_path / "IMG_0001.HEIC")
    assert str(e.value) == f"{tmp_path / 'IMG_0001.HEIC'}: HEIC needs pillow-heif: pip install pillow-heif"
    avif_like = HEIC[:8] + b"avif" + HEIC[12:16] + b"mif1avif" + HEIC[24:]
    with pytest.raises(InputError) as e:  # AVIF is Pillow's own: never the HEIC hint
        decode_image(avif_like, name="x.avif")
    assert "pillow-heif" not in str(e.value)


def test_heic_decodes_with_pillow_heif():
    pytest.importorskip("pillow_heif", reason="pillow-heif not installed (the optional HEIC decoder)")
    img = decode_image(HEIC, name="IMG_0001.HEIC", draft_size=32)
    assert img.mode == "RGB" and img.size == (64, 48)
    top, bottom = np.asarray(img)[4, 4].astype(int), np.asarray(img)[40, 4].astype(int)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
