"""The server's one image pipeline: an upload in, its embedding (or why not) out.

Per upload: read it with the byte cap, give it an id (the sha256 of its bytes,
shortened), look the id up among the embeddings already made; the rest are decoded in
parallel threads (safely, pixel-capped) and encoded together through the micro-batcher,
which joins the images of requests that arrive together into one model call. New
embeddings are kept in a bounded LRU per (upload id, precision).

Whatever goes wrong with one upload (over the byte cap, not an image, broken, or any
other exception while decoding it) is that upload's `Failed` entry; the others go on.
Decoding runs on a pool of its own: when a request is cancelled (its timeout), the
decodes it queued and nobody started are dropped, like its queued batcher items.

Two uses, two precisions (`treeclip.runtime.precision`): "predict" encodes at the
policy's `fast` default, "embed" at exact fp32; the batcher's items are `(use, pixels)`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from treeclip.errors import InputError
from treeclip.serve.batcher import MicroBatcher
from treeclip.serve.caches import Embedded, EmbeddingCache
from treeclip.serve.limits import UploadLimits, check_file_size


class Upload(Protocol):
    """What the pipeline needs of an uploaded file (Starlette's `UploadFile` is one)."""

    filename: str | None
    size: int | None

    async def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True)
class Failed:
    """An upload that could not be used: its file name and the one-line reason."""

    file: str
    error: str


def upload_id(data: bytes) -> str:
    """A stable id for an upload: the same bytes always get the same id."""
    return hashlib.sha256(data).hexdigest()[:24]


def safe_name(filename: str | None, index: int) -> str:
    """The upload's base name for messages and rows (never a client path), or `upload-N`."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(c for c in name if c.isprintable())[:200]
    return name or f"upload-{index + 1}"


class ImagePipeline:
    """Uploads to embeddings for the `encoders` ({"predict": ..., "embed": ...}) of `clip`.

    `start()` and `stop()` run the micro-batcher and the decode threads (on the serving
    event loop)."""

    def __init__(self, clip: Any, encoders: Mapping[str, Any], limits: UploadLimits, *,
                 cache_size: int = 4096, max_batch: int = 32, max_wait_s: float = 0.005,
                 decode_threads: int | None = None) -> None:
        self.clip, self.encoders, self.limits = clip, dict(encoders), limits
        self.embeddings = EmbeddingCache(cache_size)
        self.batcher = MicroBatcher(self.encode_batch, max_batch=max_batch, max_wait_s=max_wait_s)
        self.decode_threads = decode_threads or min(8, os.cpu_count() or 1)
        self._decoder: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="treeclip-decode")
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._decoder is not None:
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self._decoder = None

    def preprocess(self, data: bytes, name: str, exact: bool = False):
        """Decode one upload (safely, pixel-capped) into the model's input tensor; raises
        `InputError("<name>: <reason>")`. `exact`: no JPEG draft (open_clip's own pixels),
        for an fp32 encoder."""
        from treeclip.data.images import decode_image
        from treeclip.runtime.images import DRAFT_MARGIN

        img = decode_image(data, name=name, max_pixels=self.limits.max_pixels, draft_size=self.clip.image_size,
                           draft=not exact, draft_margin=DRAFT_MARGIN)
        return self.clip.preprocess(img)

    def cached(self, key: str, use: str) -> Embedded | None:
        """A kept embedding of upload `key` fit for `use`: /predict takes its own precision
        or an exact one, /embed only the exact one."""
        wanted = [self.encoders[use].precision]
        if use == "predict":
            wanted.append(self.encoders["embed"].precision)
        return self.embeddings.get(key, wanted)

    def encode_batch(self, jobs: list[tuple[str, Any]]) -> list[np.ndarray]:
        """Embeddings of (use, preprocessed image) pairs, `use` "predict" or "embed" (the
        micro-batcher's batch function): one model call per encoder in the batch."""
        import torch

        out: list[np.ndarray | None] = [None] * len(jobs)
        for use, encoder in self.encoders.items():
            picked = [i for i, (u, _) in enumerate(jobs) if u == use]
            if picked:
                vectors = encoder(torch.stack([jobs[i][1] for i in picked])).numpy().astype(np.float32, copy=False)
                for i, vec in zip(picked, vectors):
                    out[i] = vec
        return out  # type: ignore[return-value]

    async def embed(self, files: Sequence[Upload], use: str) -> list[Embedded | Failed]:
        """Each upload's embedding for `use` ("predict" or "embed"; from the cache when the
        same bytes came before) or why it cannot be used, in the order given."""
        out: list[Embedded | Failed | None] = [None] * len(files)
        todo: list[tuple[int, str, str, bytes]] = []
        for i, f in enumerate(files):
            read = await self._read(f, i)
            if isinstance(read, Failed):
                out[i] = read
                continue
            name, data = read
            key = upload_id(data)
            hit = self.cached(key, use)
            if hit is None:
                todo.append((i, key, name, data))
            else:
                out[i] = Embedded(key, name, hit.embedding, hit.precision)
        ready = await self._decode(todo, out, exact=self.encoders[use].precision == "fp32")
        if ready:
            vectors = await self.batcher.submit([(use, pixels) for _, _, _, pixels in ready])
            precision = self.encoders[use].precision
            for (i, key, name, _), vec in zip(ready, vectors):
                item = Embedded(key, name, vec, precision)
                self.embeddings.put(item)
                out[i] = item
        return out  # type: ignore[return-value]

    async def _read(self, f: Upload, index: int) -> tuple[str, bytes] | Failed:
        """The upload's safe name and bytes, or `Failed` when it is over the byte cap."""
        name = safe_name(f.filename, index)
        cap = self.limits.max_file_bytes
        data = await f.read(cap + 1)
        try:
            check_file_size(name, len(data) if len(data) <= cap else (f.size or len(data)), self.limits)
        except InputError as err:
            return Failed(name, str(err))
        return name, data

    async def _decode(self, todo: list[tuple[int, str, str, bytes]], out: list[Embedded | Failed | None],
                      exact: bool) -> list[tuple[int, str, str, Any]]:
        """Decode `todo` in parallel threads; the ones that fail go into `out` as `Failed`,
        the others come back as (position, id, name, pixels)."""
        if todo and self._decoder is None:
            raise RuntimeError("ImagePipeline.embed before start()")
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(self._decoder, self.preprocess, data, name, exact)
                                         for _, _, name, data in todo), return_exceptions=True)
        ready = []
        for (i, key, name, _), pixels in zip(todo, decoded):
            if isinstance(pixels, Exception):
                out[i] = Failed(name, _failure_line(name, pixels))
            elif isinstance(pixels, BaseException):
                raise pixels
            else:
                ready.append((i, key, name, pixels))
        return ready


def _failure_line(name: str, err: Exception) -> str:
    """One line for an upload that failed to decode: the decoder's own reason, or for an
    exception it did not expect (logged with its traceback) the kind and message."""
    if isinstance(err, InputError):
        return str(err)
    _log.error("decoding upload %s failed", name, exc_info=err)
    detail = " ".join(str(err).split())[:160]
    return f"{name}: cannot be decoded ({type(err).__name__}{': ' + detail if detail else ''})"


_log = logging.getLogger("treeclip.serve")
