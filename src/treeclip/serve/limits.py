"""Upload caps and the checks that turn a bad upload into a 4xx with a one-line reason.

Every check happens before the model sees anything: the request's total size (from its
Content-Length and again while it streams in), the number of files, each file's bytes,
and each image's pixel count (read from the header, so decompression bombs are refused
before a pixel is decoded, by `treeclip.data.images.decode_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

from treeclip.errors import InputError


@dataclass(frozen=True)
class UploadLimits:
    """Caps on one request. Defaults suit a laptop serving a handful of field photos."""

    max_files: int = 64
    """Images per request."""
    max_file_bytes: int = 20 * 1024 * 1024
    """Bytes per image (a 20 MB JPEG is already a 40+ megapixel photo)."""
    max_request_bytes: int = 200 * 1024 * 1024
    """Bytes per request, all parts together; larger bodies are cut off while streaming."""
    max_pixels: int = 50_000_000
    """Pixels per image (width x height), checked from the header before decoding."""
    max_labels: int = 1000
    """Custom labels per request (each one is a text-encoder pass through every template)."""
    max_label_chars: int = 100_000
    """Characters of all custom labels of a request together."""

    def describe(self) -> dict:
        return {"max_files": self.max_files, "max_file_bytes": self.max_file_bytes,
                "max_request_bytes": self.max_request_bytes, "max_pixels": self.max_pixels,
                "max_labels": self.max_labels, "max_label_chars": self.max_label_chars}


class UploadError(Exception):
    """A request the server refuses: `status` is the HTTP code, `reason` one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def status_for(error: InputError | str) -> int:
    """The HTTP status that fits a decode failure's reason: 413 for too large, 415 for
    not an image, 422 for an image that is broken."""
    text = str(error)
    if "too many pixels" in text or "too large" in text:
        return 413
    if "not an image" in text or "empty file" in text:
        return 415
    return 422


def check_file_size(name: str, size: int, limits: UploadLimits) -> None:
    """Raise `InputError` when one upload is over the byte cap."""
    if size > limits.max_file_bytes:
        raise InputError(f"{name}: file too large ({size:,} bytes > {limits.max_file_bytes:,})")
