"""Webdataset tar shards: a writer whose shards are byte-identical for the same samples,
and a reader of the images of given samples.

A shard is written under a temporary name and renamed when whole; tar headers carry no
timestamps or owners (ustar, mode 0444, time 0), and the archive is padded to tar's
record size, as tar itself does.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

SHARD_PATTERN = "shard-%06d.tar"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, f) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._f.write(b)
        self.sha256.update(b)
        self.bytes += len(b)
        return len(b)


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's record size: archives end on a multiple of it


def _tar_header(name: str, size: int) -> bytes:
    """A ustar header: read-only file, no owner, time stamp 0 (same samples, same bytes).
    Written by hand because tarfile's generic header code costs more than the JPEG."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or not raw.isascii() or size >= 8 ** 11:
        info = tarfile.TarInfo(name)  # long or non-ASCII names: a PAX header, as tarfile writes it
        info.size, info.mode, info.mtime = size, 0o444, 0
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = b"0000444\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8  # the checksum counts its own field as spaces
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


class ShardWriter:
    """Writes `shard-%06d.tar` files into `split_dir`, starting a new shard when the
    current one reaches `max_samples` samples or would pass `max_bytes`. Each shard is
    written under a temporary name and renamed when whole."""

    def __init__(self, split_dir: str | os.PathLike, *, max_samples: int = 10000, max_bytes: float = 3e9,
                 start_index: int = 0) -> None:
        self.dir = Path(split_dir)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.index = start_index
        self.shards: list[dict[str, Any]] = []
        self._tar: _HashingFile | None = None  # the open shard, if any

    @property
    def current_name(self) -> str:
        return SHARD_PATTERN % self.index

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.current_name}.", suffix=".tmp", dir=self.dir)
        self._tmp = Path(tmp)
        self._raw = os.fdopen(fd, "wb")
        self._hashing = _HashingFile(self._raw)
        self._tar = self._hashing
        self._n = 0

    def _close(self) -> None:
        assert self._tar is not None
        end = 2 * _BLOCK  # two zero blocks end the archive, then pad to a whole record
        end += -(self._hashing.bytes + end) % _RECORD
        self._hashing.write(bytes(end))
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        final = self.dir / self.current_name
        os.chmod(self._tmp, 0o644 & ~_UMASK)  # mkstemp makes 0600; shards are meant to be shared
        os.replace(self._tmp, final)
        self.shards.append({"name": self.current_name, "n_samples": self._n,
                            "bytes": self._hashing.bytes, "sha256": self._hashing.sha256.hexdigest()})
        self._tar = None
        self.index += 1

    def write(self, members: list[tuple[str, bytes]]) -> str:
        """Add one sample's members; returns the name of the shard it went into."""
        size = sum(len(d) + 1024 for _, d in members)  # + header and padding, roughly
        if self._tar is not None and (self._n >= self.max_samples or
                                      (self._n and self._hashing.bytes + size > self.max_bytes)):
            self._close()
        if self._tar is None:
            self._open()
        for name, data in members:
            self._hashing.write(_tar_header(name, len(data)) + data + bytes(-len(data) % _BLOCK))
        self._n += 1
        return self.current_name

    def close(self) -> list[dict[str, Any]]:
        """Finish the open shard; returns every shard written (name, n_samples, bytes, sha256)."""
        if self._tar is not None:
            self._close()
        return self.shards

    def abort(self) -> None:
        """Drop the open shard's temporary file (on error)."""
        if self._tar is not None:
            try:
                self._raw.close()
            finally:
                self._tmp.unlink(missing_ok=True)
                self._tar = None


IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
"""Member extensions that hold a sample's image."""


def iter_shard_images(shard: str | os.PathLike, keys: Iterable[str]) -> Iterator[tuple[str, bytes | None, str]]:
    """(key, image bytes or None, problem) for each of `keys` in one shard: the images in
    shard order, then every key not found with the reason (an unreadable shard, or a
    sample without an image)."""
    wanted = set(keys)
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if ext in IMAGE_MEMBERS and key in wanted:
                    wanted.discard(key)
                    yield key, tar.extractfile(member).read(), ""
    except (OSError, tarfile.TarError) as e:
        for key in sorted(wanted):
            yield key, None, f"{shard}: unreadable shard ({e})"
        return
    for key in sorted(wanted):
        yield key, None, f"{shard}: sample {key} has no image"
