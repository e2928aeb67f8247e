"""The staged chunks of a build (`OUT/.build/`): images processed in worker processes,
one chunk at a time, and read back by key when the shards are written.

A chunk `N` is `chunk-N.jpgs` (the processed JPEGs back to back) and `chunk-N.json`
(per key: offset, length, hashes, or the error). The JSON is renamed into place last, so
its presence means the chunk is whole: the unit of resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from treeclip.errors import InputError
from treeclip.fsutil import atomic_path, write_json_atomic


STAGE_VERSION = 2
"""What a staged record means; part of the plan fingerprint, so that `--resume` never mixes
chunks staged by another version. 2: `phash` is Meta's PDQ (1: a PDQ-like DCT hash)."""


def chunk_name(i: int) -> str:
    """The file stem of staged chunk `i`."""
    return f"chunk-{i:06d}"


class ChunkItem(NamedTuple):
    """One image of a chunk: its key, the file to decode, and for a downloaded image the
    URL (what messages name) and its download (`status`, `detail`, `bytes`)."""

    key: str
    path: str
    url: str = ""
    download: dict | None = None


def process_image(path: str, opts: dict, name: str | None = None) -> tuple[bytes, str, str]:
    """One image -> (JPEG bytes, pixel sha256 of the stored image, phash); InputError if bad."""
    from treeclip.data.images import decode_image, encode_jpeg, pixel_sha256, resize_image
    from treeclip.data.phash import DECODE_MIN, phash

    img = decode_image(path, name=name, max_pixels=opts["max_pixels"], draft_size=max(opts["size"], DECODE_MIN))
    hash_p = phash(img)
    small = resize_image(img, opts["size"], mode=opts["resize_mode"])
    return encode_jpeg(small, quality=opts["quality"]), pixel_sha256(small), hash_p


def _stage_one(item: ChunkItem, opts: dict) -> tuple[dict, bytes]:
    """The staged record of one image (offset 0) and its JPEG (b'' when it failed). A
    downloaded image's record carries its download, with the decoder's refusal as its
    status (`download.image_status`)."""
    from treeclip.data.download import image_status

    if item.download is not None and item.download["status"] != "ok":
        return {"key": item.key, "error": f"{item.url}: {item.download['detail']}", "stage": "download",
                "download": item.download}, b""
    try:
        jpeg, sha, ph = process_image(item.path, opts, item.url or None)
        rec = {"key": item.key, "offset": 0, "length": len(jpeg), "sha256": sha, "phash": ph}
    except InputError as e:
        rec, jpeg = {"key": item.key, "error": str(e)}, b""
    except Exception as e:  # a decoder bug must not kill the build: report it
        where = item.url or item.path
        rec, jpeg = {"key": item.key, "error": f"{where}: unexpected {type(e).__name__}: "
                                               f"{' '.join(str(e).split())[:100]}"}, b""
    if item.download is not None:
        status = "ok" if jpeg else image_status(rec["error"])
        rec["download"] = {**item.download, "status": status, "detail": "" if jpeg else rec["error"]}
    return rec, jpeg


def process_chunk(args: tuple[int, list, str, dict]) -> tuple[int, int, int]:
    """Process one chunk of `ChunkItem`s (or (key, path) pairs) and stage it; returns
    (index, good, bad)."""
    index, items, work, opts = args
    work_dir = Path(work)
    records, blobs, offset = [], [], 0
    for item in items:
        rec, jpeg = _stage_one(ChunkItem(*item), opts)
        if jpeg:
            rec["offset"] = offset
            blobs.append(jpeg)
            offset += len(jpeg)
        records.append(rec)
    name = chunk_name(index)
    with atomic_path(work_dir / f"{name}.jpgs") as tmp:
        with open(tmp, "wb") as f:
            for b in blobs:
                f.write(b)
    write_json_atomic(work_dir / f"{name}.json", {"records": records})
    ok = len(blobs)
    return index, ok, len(items) - ok


def chunk_items(entries: list[tuple[str, str, bool]], downloads: dict, download_dir: str | Path) -> list[ChunkItem]:
    """The `ChunkItem`s of one chunk's (key, path, remote) entries: a downloaded image is
    its cached file under `download_dir`, its URL and its download (from `downloads`, a
    `Download` by URL)."""
    from treeclip.data.download import DownloadCache

    items = []
    for key, path, remote in entries:
        d = downloads.get(path) if remote else None
        if d is None:
            items.append(ChunkItem(key, path))
        else:
            local = str(DownloadCache.path_in(Path(download_dir), path))
            items.append(ChunkItem(key, local, path, {"status": d.status, "detail": d.detail, "bytes": d.bytes}))
    return items


def fetch_and_process_chunk(index: int, entries: list[tuple[str, str, bool]], work: str, opts: dict,
                            download_opts, download_dir: str) -> tuple[int, int, int]:
    """One chunk from start to staged, in one worker (a distributed build's task): fetch
    its URLs into the shared download cache (those cached already are not fetched), then
    `process_chunk`. The staged chunk is the same whichever worker runs it, and whether
    its images were fetched here or by the local build's download stage."""
    from treeclip.data.download import DownloadCache, download_all

    urls = [path for _, path, remote in entries if remote]
    # clean=False: other tasks write into the same cache at the same time (the driver
    # removed a killed build's temporaries before any task started)
    downloads = download_all(urls, DownloadCache(download_dir, clean=False), download_opts,
                             progress=False) if urls else {}
    return process_chunk((index, chunk_items(entries, downloads, download_dir), work, opts))


def plan_fingerprint(plan: list[tuple[str, str]], opts: dict) -> str:
    """sha256 of the (key, path) plan, the image options and STAGE_VERSION: a resume must
    match it."""
    h = hashlib.sha256(json.dumps({**opts, "stage_version": STAGE_VERSION}, sort_keys=True).encode())
    for key, path in plan:
        h.update(f"{key}\0{path}\n".encode("utf-8"))
    return h.hexdigest()


def make_pool(workers: int):
    """A process pool for image work."""
    import multiprocessing as mp

    # forkserver: workers start clean (no threads inherited from pyarrow or torch); the
    # server preloads the image stack once, so each worker forks with it already imported.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["treeclip.data.staging", "treeclip.data.dedup", "treeclip.data.images",
                                "treeclip.data.phash"])
    return ctx.Pool(workers)


class ChunkReader:
    """The records of every staged chunk, and random access to staged JPEGs by key."""

    def __init__(self, work: Path, n_chunks: int) -> None:
        self.work = work
        self.records: dict[str, tuple[int, dict]] = {}
        for i in range(n_chunks):
            for rec in json.loads((work / f"{chunk_name(i)}.json").read_text(encoding="utf-8"))["records"]:
                self.records[rec["key"]] = (i, rec)
        self._files: dict[int, object] = {}

    def record(self, key: str) -> dict:
        """The staged record of `key`: offset, length, sha256, phash, or error."""
        return self.records[key][1]

    def image(self, key: str) -> bytes:
        """The staged JPEG of `key`."""
        i, rec = self.records[key]
        f = self._files.get(i)
        if f is None:
            f = self._files[i] = open(self.work / f"{chunk_name(i)}.jpgs", "rb")
        f.seek(rec["offset"])
        return f.read(rec["length"])

    def close(self) -> None:
        for f in self._files.values():
            f.close()
