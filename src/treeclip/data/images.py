"""Safe image decoding, resizing and JPEG encoding, shared by every stage.

`decode_image` turns any file a user points at into an RGB PIL image or raises
`InputError("<name>: <reason>")` with one line that says what is wrong: empty file, not an
image, truncated or corrupt data, too many pixels (decompression bombs are refused from
the header, before any pixel is decoded). It applies the EXIF orientation and converts
every common mode (1, L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F) to RGB, compositing
transparency on white.

Large JPEGs take a fast path: with `draft_size`, libjpeg decodes at 1/2, 1/4 or 1/8 scale
as long as both sides stay at least `draft_size`, which is most of the cost saved when a
12-megapixel photo becomes a 224 px training image.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from treeclip.errors import InputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".avif",
    ".ppm", ".pgm", ".pbm", ".pnm",
})
"""File endings (lower case) that a folder scan takes for images: the photo and bitmap
formats Pillow decodes (HEIC/HEIF would need a plugin, so they are not listed)."""

MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused (about 10k x 10k; PIL warns at ~89M)."""

# Truncated images must fail loudly, not come back grey at the bottom.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_WHITE = (255, 255, 255)


def _read(src: bytes | str | Path, name: str | None) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), name or "<bytes>"
    path = Path(src)
    label = name or str(path)
    try:
        return path.read_bytes(), label
    except FileNotFoundError:
        raise InputError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory, not an image") from None
    except OSError as e:
        raise InputError(f"{label}: cannot read ({e.strerror or e})") from None


def _open(data: bytes, label: str, max_pixels: int) -> Image.Image:
    if not data:
        raise InputError(f"{label}: empty file (0 bytes)")
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
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"{label}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise InputError(f"{label}: too many pixels ({w}x{h} > {max_pixels:,}; decompression bomb refused)")
    return img


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:120]


def _to_rgb(img: Image.Image) -> Image.Image:
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
) -> Image.Image:
    """Decode `src` (encoded bytes or a file path) to an RGB image, oriented by EXIF.

    `name` labels error messages (default: the path). `draft_size`, when given, lets a
    JPEG decode at reduced scale while both sides stay >= `draft_size`. Raises
    `InputError("<name>: <reason>")` for anything that is not a usable image.
    """
    data, label = _read(src, name)
    img = _open(data, label, max_pixels)
    try:
        if draft_size and img.format == "JPEG":
            # draft keeps both sides >= the request, so a later shorter-side resize to
            # draft_size never upsamples. The request is square, so EXIF rotation is moot.
            img.draft(img.mode, (draft_size, draft_size))
        img.load()
    except Exception as e:
        if "runcated" in str(e):
            raise InputError(f"{label}: truncated image data") from None
        raise InputError(f"{label}: corrupt image data ({_reason(e)})") from None
    try:
        ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to turn
    except Exception:
        pass  # a broken EXIF block is no reason to lose the pixels
    try:
        return _to_rgb(img)
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
