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
            worker.tidy_when_idle(lambda: counters[0], 0.2, lambda: given.append(counters[0]))
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


def test_giving_back_frees_cyclic_garbage_and_trims() -> None:
    """The default: a full collection (what the oldest generation held goes) and
    malloc_trim, which must not fail here (glibc)."""

    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    gc.disable()
    try:
        for _ in range(1000):
            Node()
        assert sum(isinstance(o, Node) for o in gc.get_objects()) == 1000
        worker._give_back()
        assert sum(isinstance(o, Node) for o in gc.get_objects()) == 0
    finally:
        gc.enable()
