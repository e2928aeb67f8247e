"""treeclip.serve.batcher.MicroBatcher: requests that arrive together share one call.

Deterministic: requests are queued while the batcher is held and released together, or
joined because a batch fills up; no test depends on a wall-clock window."""

from __future__ import annotations

import asyncio

import pytest

from treeclip.serve.batcher import MicroBatcher


def run(coro):
    return asyncio.run(coro)


async def until(condition, limit: int = 10_000) -> None:
    """Let the event loop run until `condition()` holds (a bound on loop turns, not on time)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def held_gather(batcher: MicroBatcher, requests: list[list], chunks: int | None = None):
    """Submit every request while held, wait until all are queued, then release."""
    batcher.hold()
    tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
    expected = chunks if chunks is not None else len(requests)
    await until(lambda: batcher.queued == expected)
    batcher.release()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_queued_requests_are_joined_and_split_back_in_order():
    calls: list[list[int]] = []

    def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    async def main():
        b = MicroBatcher(double, max_batch=8, max_wait_s=0)
        await b.start()
        try:
            out = await held_gather(b, [[1, 2], [3], [4, 5, 6]])
        finally:
            await b.stop()
        return out, b.stats

    out, stats = run(main())
    assert out == [[2, 4], [6], [8, 10, 12]]
    assert calls == [[1, 2, 3, 4, 5, 6]]  # one call for three requests
    assert (stats.batches, stats.items, stats.requests, stats.largest_batch) == (1, 6, 3, 6)


def test_a_request_arriving_during_the_window_joins_the_batch():
    """The first request waits for company; the second fills the batch, which then runs
    at once (the 60 s window is never waited out)."""
    calls: list[list[int]] = []

    def ident(items):
        calls.append(list(items))
        return list(items)

    async def main():
        b = MicroBatcher(ident, max_batch=2, max_wait_s=60)
        await b.start()
        try:
            first = asyncio.create_task(b.submit([1]))
            await until(lambda: b.stats.requests == 1 and b.queued == 0)  # taken; waiting for more
            second = asyncio.create_task(b.submit([2]))
            return await asyncio.wait_for(asyncio.gather(first, second), 30)
        finally:
            await b.stop()

    assert run(main()) == [[1], [2]]
    assert calls == [[1, 2]]


def test_large_requests_are_split_and_batches_never_exceed_max():
    sizes: list[int] = []

    def ident(items):
        sizes.append(len(items))
        return list(items)

    async def main():
        b = MicroBatcher(ident, max_batch=4, max_wait_s=0)
        await b.start()
        try:
            return await held_gather(b, [list(range(10)), [100, 101, 102]], chunks=4)
        finally:
            await b.stop()

    first, second = run(main())
    assert first == list(range(10)) and second == [100, 101, 102]
    # 10 items -> chunks of 4, 4, 2; the 3-item request does not fit beside the 2
    assert sizes == [4, 4, 2, 3]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs():
    def picky(items):
        if "bad" in items:
            raise ValueError("bad item in batch")
        return [s.upper() for s in items]

    async def main():
        b = MicroBatcher(picky, max_batch=8, max_wait_s=0)
        await b.start()
        try:
            results = await held_gather(b, [["a"], ["bad"]])
            after = await b.submit(["ok"])
        finally:
            await b.stop()
        return results, after

    results, after = run(main())
    assert all(isinstance(r, ValueError) for r in results)  # same batch, same failure
    assert after == ["OK"]


def test_submit_before_start_is_an_error():
    b = MicroBatcher(lambda items: items)
    with pytest.raises(RuntimeError, match="before start"):
        run(b.submit([1]))
    assert run(b.submit([])) == []
