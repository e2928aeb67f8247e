"""Safe image decoding, resizing and JPEG encoding, shared by every stage.

`decode_image` turns any file a user points at into an RGB PIL image or raises
`InputError("<name>: <reason>")` with one line that says what is wrong: empty file, not an
image, truncated or corrupt data, or too large. It applies the EXIF orientation and
converts every common mode (1, L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F) to RGB,
compositing transparency on white. `normalize_image` does the same for a PIL image that
Python code hands over.

What is refused as too large, and why (the caps, each a keyword argument):

- `max_bytes` (`MAX_FILE_BYTES`, 200 MiB): a file's size is checked before it is read, so
  a huge file (or a device, a pipe) is never read into memory on the chance it is an image.
- `max_pixels` (`MAX_PIXELS`, 100 M): width x height, from the header, before any pixel is
  decoded (decompression bombs: a few kB of PNG can claim gigapixels).
- `max_aspect` (`MAX_ASPECT_RATIO`, 100) and the resize cap: every model resizes the
  shorter side to its input size, so an image of W x H (W > H) becomes size x size*W/H
  before the centre crop. A 146 kB PNG of 2,000,000 x 25 pixels (50 M, under the pixel
  cap) would become 224 x 17.9 M pixels, tens of GB. Images whose long side is more than
  `max_aspect` times the short side are refused, and so are those that after a shorter-side
  resize to the model's size (`draft_size`; 224, BioCLIP's and the builder's default, when
  not given) would have more pixels than the pixel cap (100 M, or `max_pixels` if
  larger; only builds with a large `--size` meet this one). All from the header, before
  any pixel is decoded.

Large JPEGs take a fast path: with `draft_size`, libjpeg decodes at 1/2, 1/4 or 1/8 scale
as long as both sides stay at least `draft_size`, which is most of the cost saved when a
12-megapixel photo becomes a 224 px training image.

HEIC/HEIF (iPhone photos) decode when `pillow-heif` is installed (its opener is registered
on the first HEIF file seen); without it a HEIF file is refused with a one-line reason
that says what to install, never skipped in silence.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from treeclip.errors import InputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".avif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".heic", ".heif",
})
"""File endings (lower case) that a folder scan takes for images: the photo and bitmap
formats Pillow decodes, and HEIC/HEIF (decoded with pillow-heif; without it each such
file gets an error that says so)."""

MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused (about 10k x 10k; PIL warns at ~89M)."""

MAX_FILE_BYTES = 200 * 1024 * 1024
"""Files larger than this (200 MiB) are refused before they are read."""

MAX_ASPECT_RATIO = 100
"""Images whose long side is more than this many times the short side are refused (a
shorter-side resize of them to the model's size would allocate without bound)."""

RESIZE_SIZE = 224
"""The size a shorter-side resize is assumed to go to when the caller does not say
(`draft_size`): BioCLIP's input size and the builder's default."""

HEIF_HINT = "HEIC needs pillow-heif: pip install pillow-heif"

# Truncated images must fail loudly, not come back grey at the bottom.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_WHITE = (255, 255, 255)


def _read(src: bytes | str | Path, name: str | None, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        if len(src) > max_bytes:
            raise InputError(f"{label}: file too large ({len(src):,} bytes > {max_bytes:,})")
        return bytes(src), label
    path = Path(src)
    label = name or str(path)
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer; fstat says what it is.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InputError(f"{label}: file not found") from None
    except OSError as e:
        raise InputError(f"{label}: cannot read ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{label}: is a directory, not an image")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{label}: not a regular file (a device, pipe or socket), not an image")
        if info.st_size > max_bytes:
            raise InputError(f"{label}: file too large ({info.st_size:,} bytes > {max_bytes:,})")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)  # bounded even if the file grows while we read it
    except OSError as e:
        raise InputError(f"{label}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"{label}: file too large (more than {max_bytes:,} bytes)")
    return data, label


_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})


def _is_heif(data: bytes) -> bool:
    """An ISO media file (ftyp box) whose brands say HEIF with HEVC, or a plain HEIF
    container (mif1/msf1) that is not AVIF (Pillow reads AVIF itself)."""
    if data[4:8] != b"ftyp":
        return False
    size = int.from_bytes(data[:4], "big")
    box = data[8:min(max(size, 16), 64)]
    brands = {box[i:i + 4] for i in range(0, len(box) - 3, 4)}
    return bool(brands & _HEIF_BRANDS) or (bool(brands & {b"mif1", b"msf1"}) and not brands & {b"avif", b"avis"})


@functools.cache
def heif_supported() -> bool:
    """Whether HEIC/HEIF files can be decoded: pillow-heif is importable (its opener is
    registered with Pillow on the first call)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def check_size(width: int, height: int, label: str, *, max_pixels: int = MAX_PIXELS,
               max_aspect: float = MAX_ASPECT_RATIO, resize_to: int = RESIZE_SIZE) -> None:
    """Raise `InputError` when an image of `width` x `height` is too large to decode or to
    resize: no pixels, more than `max_pixels`, a long side more than `max_aspect` times the
    short side, or more pixels after a shorter-side resize to `resize_to` than the larger
    of `max_pixels` and `MAX_PIXELS`."""
    w, h = width, height
    if w <= 0 or h <= 0:
        raise InputError(f"{label}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise InputError(f"{label}: too many pixels ({w}x{h} > {max_pixels:,}; decompression bomb refused)")
    long, short = max(w, h), min(w, h)
    if long > max_aspect * short:
        raise InputError(f"{label}: too large to resize ({w}x{h}: one side is {long / short:,.0f} times the other, "
                         f"more than {max_aspect:g}; aspect-ratio bomb refused)")
    resized, cap = resize_to * math.ceil(resize_to * long / short), max(max_pixels, MAX_PIXELS)
    if resized > cap:  # never under MAX_PIXELS: a small pixel cap must not refuse every image
        raise InputError(f"{label}: too large to resize ({w}x{h} resized to {resize_to} px on the shorter side "
                         f"would have {resized:,} pixels > {cap:,})")


def _open(data: bytes, label: str, limits: dict) -> Image.Image:
    if not data:
        raise InputError(f"{label}: empty file (0 bytes)")
    if _is_heif(data) and not heif_supported():
        raise InputError(f"{label}: {HEIF_HINT}")
    with warnings.catch_warnings():
        # We apply our own pixel cap; PIL's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise InputError(f"{label}: too many pixels (decompression bomb refused)") from None
        except UnidentifiedImageError:
            raise InputError(f"{label}: not an image (unrecognised format)") from None
        except Exception as e:  # PIL raises many types on garbage headers
            if "runcated" in str(e):
                raise InputError(f"{label}: truncated image data") from None
            raise InputError(f"{label}: corrupt image header ({_reason(e)})") from None
    check_size(*img.size, label, **limits)
    return img


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:120]


def to_rgb(img: Image.Image) -> Image.Image:
    """Every mode to RGB; transparency composited on white; 16-bit and float scaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # full 16-bit range to 8 bits
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("LA", "La", "RGBa", "RGBA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(
    src: bytes | str | Path,
    *,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_aspect: float = MAX_ASPECT_RATIO,
    draft: bool = True,
    draft_margin: int = 1,
) -> Image.Image:
    """Decode `src` (encoded bytes or a file path) to an RGB image, oriented by EXIF.

    `name` labels error messages (default: the path). `draft_size` is the size a later
    shorter-side resize goes to (the model's input size): it lets a JPEG decode at reduced
    scale while both sides stay >= `draft_margin` x `draft_size` (unless `draft=False`: the
    full-resolution pixels a plain open_clip preprocess sees), and sets the resize cap (224
    when not given). Raises `InputError("<name>: <reason>")` for anything that is not a usable
    image, and for files or images over the caps (see the module docstring).
    """
    data, label = _read(src, name, max_bytes)
    limits = {"max_pixels": max_pixels, "max_aspect": max_aspect, "resize_to": draft_size or RESIZE_SIZE}
    img = _open(data, label, limits)
    if draft and draft_size and img.format == "JPEG":
        # draft keeps both sides >= the request, so a later shorter-side resize to
        # draft_size never upsamples. The request is square, so EXIF rotation is moot.
        _loading(label, img.draft, img.mode, (draft_size * draft_margin,) * 2)
    _loading(label, img.load)
    try:
        ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to turn
    except Exception:
        pass  # a broken EXIF block is no reason to lose the pixels
    return _rgb_or_error(img, label)


def normalize_image(
    img: Image.Image,
    *,
    name: str = "image",
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
    max_aspect: float = MAX_ASPECT_RATIO,
) -> Image.Image:
    """A PIL image from Python code, checked and normalised as `decode_image` does a file:
    the pixel, aspect-ratio and resize caps (before pixels are loaded, when the image was
    opened lazily), the EXIF orientation, and every mode to RGB. The caller's image is
    never changed (a new image comes back when anything had to be done). Raises
    `InputError("<name>: <reason>")`."""
    check_size(*img.size, name, max_pixels=max_pixels, max_aspect=max_aspect, resize_to=draft_size or RESIZE_SIZE)
    _loading(name, img.load)
    try:
        if img.getexif().get(_ORIENTATION, 1) not in (1, None):
            img = ImageOps.exif_transpose(img)  # a turned copy
    except Exception:
        pass  # as in decode_image: broken EXIF keeps the pixels as they are
    return _rgb_or_error(img, name)


_ORIENTATION = 0x0112  # the EXIF tag


def _loading(label: str, step, *args) -> None:
    """Run one decoding step of PIL; its failure as a one-line InputError."""
    try:
        step(*args)
    except Exception as e:
        if "runcated" in str(e):
            raise InputError(f"{label}: truncated image data") from None
        raise InputError(f"{label}: corrupt image data ({_reason(e)})") from None


def _rgb_or_error(img: Image.Image, label: str) -> Image.Image:
    try:
        return to_rgb(img)
    except Exception as e:
        raise InputError(f"{label}: unsupported image mode {img.mode} ({_reason(e)})") from None


def resize_image(img: Image.Image, size: int, *, mode: str = "crop") -> Image.Image:
    """Resize with bicubic filtering, BioCLIP style.

    - `crop` (default): shorter side to `size`, then the centre `size` x `size` square,
      so the stored image is square like TreeOfLife-10M's 224 x 224 images.
    - `shorter`: shorter side to `size`, aspect ratio kept, nothing cut away.
    - `stretch`: straight to `size` x `size`, aspect ratio not kept.
    """
    w, h = img.size
    if mode == "stretch":
        return img if (w, h) == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)
    if mode not in ("crop", "shorter"):
        raise ValueError(f"unknown resize mode {mode!r}; expected crop, shorter or stretch")
    scale = size / min(w, h)
    if mode == "shorter":
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        return img if (nw, nh) == (w, h) else img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if (w, h) == (size, size):
        return img
    # Resample only the centre square of the source (exact, sub-pixel), not the whole
    # image then a crop: the same result at a fraction of the work.
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
                      reducing_gap=3.0)


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    """Encode an RGB image as baseline JPEG bytes (deterministic for the same pixels)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pixel_sha256(img: Image.Image) -> str:
    """sha256 hex of the decoded RGB pixels and size: equal for pixel-identical images
    whatever file format or metadata carried them."""
    import hashlib

    rgb = img.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()
