"""A small asyncio micro-batcher: requests that arrive together share one model call.

Each request `submit`s its items and awaits their results. A single consumer task takes
what is queued, waits up to `max_wait_s` for more (or until `max_batch` items), runs the
batch function once in a worker thread, and hands each request its slice of the output.
One worker thread means the model is never called concurrently, and the event loop stays
free to accept uploads while a batch runs.

`hold()` keeps the consumer from taking anything until `release()`; what was queued
meanwhile then forms batches by size alone. Tests use it to make batching deterministic,
without relying on requests arriving within a wall-clock window.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters for /health: how many model calls served how many items and requests."""

    batches: int = 0
    items: int = 0
    requests: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "requests": self.requests,
                "largest_batch": self.largest_batch}


@dataclass
class MicroBatcher:
    """Batch `fn(list[item]) -> list[result]` across concurrent callers of `submit`.

    A request larger than `max_batch` is split over several calls; small requests that
    arrive within `max_wait_s` of each other are joined into one call."""

    fn: Callable[[list[Any]], Sequence[Any]]
    max_batch: int = 32
    max_wait_s: float = 0.005
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: asyncio.Queue | None = field(default=None, repr=False)
    _task: asyncio.Task | None = field(default=None, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _carry: _Job | None = field(default=None, repr=False)
    _open: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._open.set()

    def hold(self) -> None:
        """Take nothing from the queue until `release()` (call before `start` or on its loop)."""
        self._open.clear()

    def release(self) -> None:
        """Let the consumer run again; safe to call from any thread."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._open.set)
        else:
            self._open.set()

    @property
    def queued(self) -> int:
        """Chunks waiting for a model call (not counting the one running)."""
        return (self._queue.qsize() if self._queue is not None else 0) + (self._carry is not None)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treeclip-model")
        self._task = asyncio.create_task(self._run(), name="treeclip-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._task = self._pool = self._queue = None

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """The results for `items`, in order; raises what `fn` raised for their batch."""
        if not items:
            return []
        if self._queue is None:
            raise RuntimeError("MicroBatcher.submit before start()")
        loop = asyncio.get_running_loop()
        chunks = [items[i:i + self.max_batch] for i in range(0, len(items), self.max_batch)]
        futures = []
        for chunk in chunks:
            fut = loop.create_future()
            self._queue.put_nowait(_Job(chunk, fut))
            futures.append(fut)
        self.stats.requests += 1
        out: list[Any] = []
        for part in await asyncio.gather(*futures):
            out.extend(part)
        return out

    async def _collect(self) -> list[_Job]:
        while True:
            await self._open.wait()
            first, self._carry = self._carry, None
            if first is None:
                first = await self._queue.get()
            if self._open.is_set():
                break
            self._carry = first  # held while waiting for it: it waits for release()
        jobs = [first]
        size = len(jobs[0].items)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            # take what is already queued without waiting; then wait out the window
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if size + len(job.items) > self.max_batch:
                self._carry = job  # too big to join: it opens the next batch
                break
            jobs.append(job)
            size += len(job.items)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            flat = [item for job in jobs for item in job.items]
            try:
                results = await loop.run_in_executor(self._pool, self.fn, flat)
            except Exception as err:  # the batch failed: every request in it hears why
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.stats.batches += 1
            self.stats.items += len(flat)
            self.stats.largest_batch = max(self.stats.largest_batch, len(flat))
            start = 0
            for job in jobs:
                n = len(job.items)
                if not job.future.done():
                    job.future.set_result(list(results[start:start + n]))
                start += n
