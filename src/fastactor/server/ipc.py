"""Calls between shard workers. A stub whose instance another worker owns sends the call over
that worker's Unix socket as a codec frame and gets the reply (or the error) back the same
way; the native parts (core/channel.pyx) are re-exported here:

- ``RoutedNamespace``: ``env.<BINDING>`` in a worker; local stubs for the instances this
  worker owns, ``RemoteStub`` for the others.
- ``Channel``: this worker's connections to the others, opened on first use; frames sent in
  one loop iteration leave in one write.
- ``CallServer``: the owner's end, one per connected peer; ``serve_calls`` listens.
"""

from __future__ import annotations

import asyncio
import weakref

from .._core import ActorNamespace, CallServer, Channel, RemoteStub, RoutedNamespace

__all__ = ["CallListener", "CallServer", "Channel", "RemoteStub", "RoutedNamespace", "serve_calls"]


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


async def serve_calls(path: str, namespaces: dict[str, ActorNamespace]) -> CallListener:
    """Answers calls for the instances this worker owns; NAMESPACES maps "account/type"."""
    loop = asyncio.get_running_loop()
    conns: weakref.WeakSet[CallServer] = weakref.WeakSet()

    def factory() -> CallServer:
        c = CallServer(namespaces)
        conns.add(c)
        return c

    return CallListener(await loop.create_unix_server(factory, path), conns)
