"""Calls between shard workers. A stub whose instance another worker owns sends the call over
that worker's Unix socket as a codec frame and gets the reply (or the error) back the same
way; the native parts (core/channel.pyx) are re-exported here:

- ``RoutedNamespace``: ``env.<BINDING>`` in a worker; local stubs for the instances this
  worker owns, ``RemoteStub`` for the others.
- ``Channel``: this worker's connections to the others, opened on first use; frames sent in
  one loop iteration leave in one write.
- ``CallServer``: the owner's end, one per connected peer; ``serve_calls`` listens. It also
  answers ``ask_stats``: the supervisor's /metrics asks each worker for its counters there.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Callable
from typing import Any

from .._core import (
    STATS_KIND,
    ActorNamespace,
    CallServer,
    Channel,
    RemoteStub,
    RoutedNamespace,
    channel_stats,
    decode_value,
    encode_frame,
)

__all__ = [
    "CallListener",
    "CallServer",
    "Channel",
    "RemoteStub",
    "RoutedNamespace",
    "ask_stats",
    "channel_stats",
    "serve_calls",
]


class CallListener:
    """The listening socket and the connections of the peers."""

    def __init__(self, server: asyncio.AbstractServer, conns: weakref.WeakSet[CallServer]):
        self.server = server
        self.conns = conns

    def close(self) -> None:
        """Stops listening and closes the peers' connections: their calls still running
        fail at the caller with ActorOutputGateError, as if this worker had died."""
        self.server.close()
        for c in list(self.conns):
            c.close()


async def serve_calls(
    path: str,
    namespaces: dict[str, ActorNamespace],
    stats: Callable[[], dict[str, Any]] | None = None,
) -> CallListener:
    """Answers calls for the instances this worker owns; NAMESPACES maps "account/type".
    STATS gives the counters ``ask_stats`` reads."""
    loop = asyncio.get_running_loop()
    conns: weakref.WeakSet[CallServer] = weakref.WeakSet()

    def factory() -> CallServer:
        c = CallServer(namespaces, stats)
        conns.add(c)
        return c

    return CallListener(await loop.create_unix_server(factory, path), conns)


def ask_stats(path: str, timeout: float) -> dict[str, Any]:
    """The counters of the worker listening on PATH, as they are now (blocking, for the
    supervisor's admin threads). OSError if it does not answer within TIMEOUT seconds in all,
    ValueError if the answer is not a dict of counters."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(encode_frame([1, "", "", STATS_KIND, "stats", [], None, None]))
        buf = bytearray()
        need = 4
        while len(buf) < need:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the worker closed the connection before it answered")
            buf += chunk
            if need == 4 and len(buf) >= 4:
                need = 4 + int.from_bytes(buf[:4], "big")
    reply = decode_value(bytes(buf[4:need]))
    if not (isinstance(reply, list) and len(reply) == 3 and reply[1] is True):
        raise ValueError(f"not a stats reply: {reply!r:.200}")
    if not isinstance(reply[2], dict):
        raise ValueError(f"stats that are not a dict: {reply[2]!r:.200}")
    return reply[2]
