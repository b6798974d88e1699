"""An asyncio transport in memory, for driving the HTTP front without sockets."""

from __future__ import annotations

import asyncio
from typing import Any


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        assert not self.eof, "write after write_eof"
        self.out += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def drive(fetch: Any, limits: Any, chunks: list[bytes], base_url: str) -> tuple[Any, Any]:
    """One connection of the HTTP front serving FETCH on a Transport here: CHUNKS arrive one
    per loop turn, then up to 50 more turns let the queued requests be answered.
    (transport, protocol)."""
    from fastactor.server.http import HttpProtocol

    t = Transport()
    p = HttpProtocol(fetch, None, limits, base_url, set(), {"requests": 0})
    p.connection_made(t)
    for c in chunks:
        p.data_received(c)
        await asyncio.sleep(0)
    for _ in range(50):
        if not p.queue and not p.busy:
            break
        await asyncio.sleep(0)
    return t, p
