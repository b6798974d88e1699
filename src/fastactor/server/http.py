"""The HTTP/1.1 front of ``fastactor serve``: its limits, and the connection protocol
(``HttpProtocol``, native: core/http.pyx) that parses with httptools, drives each request's
``fetch`` eagerly and answers requests in order (keep-alive and pipelining); every refusal is
a proper status with a short body."""

from __future__ import annotations

import resource

from .._core import FrontStats, bodies_held, encode_response
from .._core import HttpConnection as HttpProtocol

__all__ = [
    "BODY_MEMORY",
    "CONNECTIONS",
    "FrontStats",
    "HttpProtocol",
    "Limits",
    "base_url",
    "bodies_held",
    "connection_cap",
    "encode_response",
]


def base_url(host: str, port: int) -> str:
    """The URL of a listener on HOST:PORT; an IPv6 address goes in brackets (RFC 3986)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


CONNECTIONS = 10_000  # a worker's connections, by default, before it answers 503
BODY_MEMORY = 512 << 20  # the request bodies a worker holds at once, by default


def connection_cap(default: int = CONNECTIONS) -> int:
    """The connections a worker takes before it answers 503: DEFAULT, or fewer where the open
    files limit leaves less room (each connection holds a descriptor; a quarter of the limit,
    up to 1,024, stays for logs, channels and the rest). Past the limit, accept() fails and
    a client would wait unanswered instead."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return default
    return max(1, min(default, soft - min(1024, soft // 4)))


class Limits:
    """The front's limits. A request's head must be whole HEAD_TIMEOUT seconds after its first
    byte, the whole request REQUEST_TIMEOUT after it, else 408 and the connection closes; a
    connection with nothing pending closes after IDLE_TIMEOUT seconds without a byte. Timers
    tick at half the smallest of the three, so each acts up to that much late. BODY_MEMORY
    bounds the request bodies a worker holds at once across its connections: a body over 64
    KiB that would take it past that is answered 503 with Retry-After (never less than BODY,
    so that a body the server takes always fits), and so is a head still arriving past 16 KiB
    once it is passed; a smaller body or head still arriving is answered so past a quarter
    more."""

    __slots__ = (
        "body",
        "headers",
        "fetch_timeout",
        "idle_timeout",
        "head_timeout",
        "request_timeout",
        "max_pipeline",
        "connections",
        "body_memory",
    )

    def __init__(
        self,
        body: int = 10 << 20,
        headers: int = 64 << 10,
        fetch_timeout: float = 30.0,
        idle_timeout: float = 75.0,
        head_timeout: float = 30.0,
        request_timeout: float = 300.0,
        max_pipeline: int = 128,
        connections: int = CONNECTIONS,
        body_memory: int = BODY_MEMORY,
    ) -> None:
        self.body = body
        self.headers = headers
        self.fetch_timeout = fetch_timeout
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.request_timeout = request_timeout
        self.max_pipeline = max_pipeline
        self.connections = connections
        self.body_memory = max(body_memory, body)
