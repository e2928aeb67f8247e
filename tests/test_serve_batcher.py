"""treeclip.serve.batcher.MicroBatcher: requests that arrive together share one call."""

from __future__ import annotations

import asyncio

import pytest

from treeclip.serve.batcher import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_joined_and_split_back_in_order():
    calls: list[list[int]] = []

    def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    async def main():
        b = MicroBatcher(double, max_batch=8, max_wait_s=0.2)
        await b.start()
        try:
            out = await asyncio.gather(b.submit([1, 2]), b.submit([3]), b.submit([4, 5, 6]))
        finally:
            await b.stop()
        return out, b.stats

    out, stats = run(main())
    assert out == [[2, 4], [6], [8, 10, 12]]
    assert calls == [[1, 2, 3, 4, 5, 6]]  # one call for three requests
    assert (stats.batches, stats.items, stats.requests, stats.largest_batch) == (1, 6, 3, 6)


def test_large_requests_are_split_and_batches_never_exceed_max():
    sizes: list[int] = []

    def ident(items):
        sizes.append(len(items))
        return list(items)

    async def main():
        b = MicroBatcher(ident, max_batch=4, max_wait_s=0.05)
        await b.start()
        try:
            return await asyncio.gather(b.submit(list(range(10))), b.submit([100, 101, 102]))
        finally:
            await b.stop()

    first, second = run(main())
    assert first == list(range(10)) and second == [100, 101, 102]
    assert max(sizes) <= 4 and sum(sizes) == 13


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs():
    def picky(items):
        if "bad" in items:
            raise ValueError("bad item in batch")
        return [s.upper() for s in items]

    async def main():
        b = MicroBatcher(picky, max_batch=8, max_wait_s=0.05)
        await b.start()
        try:
            results = await asyncio.gather(b.submit(["a"]), b.submit(["bad"]), return_exceptions=True)
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
