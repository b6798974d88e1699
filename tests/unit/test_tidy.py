"""A worker gives memory back once it goes idle (server/worker.py, tidy_when_idle)."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from fastactor.server import worker


def test_memory_is_given_back_once_per_quiet_spell() -> None:
    """Nothing while the counters move, once when they stop, not again while they stay; and
    once more after a change that came while idle (instances evicted)."""
    counters = [0]
    given: list[int] = []

    async def go() -> None:
        task = asyncio.ensure_future(
            worker.tidy_when_idle(lambda: counters[0], lambda: given.append(counters[0]), 0.2)
        )
        await asyncio.sleep(0.5)  # idle from the start: nothing happened to tidy after
        for _ in range(30):  # busy: the counters move ten times a period
            counters[0] += 1
            await asyncio.sleep(0.02)
        busy = list(given)
        await asyncio.sleep(1.0)  # a quiet spell of five periods
        counters[0] += 100  # an eviction while idle
        await asyncio.sleep(1.0)
        task.cancel()
        assert busy == []

    uvloop.run(go())
    assert given == [30, 130]


def test_memory_is_given_back_only_by_a_worker_that_grew() -> None:
    """A full collection, then malloc_trim (which must not fail here, glibc), once the
    process holds 16 MiB more than when it was ready; not after a load that left it as it
    was (what it would cost the next burst buys nothing then)."""

    class Node:
        def __init__(self) -> None:
            self.me = self

    def nodes() -> int:
        return sum(isinstance(o, Node) for o in gc.get_objects())

    mib = 1 << 20
    gc.collect()
    gc.disable()
    try:
        for _ in range(1000):
            Node()
        assert not worker.give_back_if_grown(100 * mib, lambda: 110 * mib)
        assert nodes() == 1000
        assert worker.give_back_if_grown(100 * mib, lambda: 120 * mib)
        assert nodes() == 0
        for _ in range(10):
            Node()
        assert worker.give_back_if_grown(0)  # the start unknown: always
        assert nodes() == 0
    finally:
        gc.enable()
    assert worker.resident_bytes() > mib  # read from /proc on Linux
