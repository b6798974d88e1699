"""The HTTP/1.1 front of ``fastactor serve``: its limits, and the connection protocol
(``HttpProtocol``, native: core/http.pyx) that parses with httptools, drives each request's
``fetch`` eagerly and answers requests in order (keep-alive and pipelining); every refusal is
a proper status with a short body."""

from __future__ import annotations

from .._core import HttpConnection as HttpProtocol
from .._core import encode_response

__all__ = ["HttpProtocol", "Limits", "encode_response"]


class Limits:
    """The front's limits. A request's head must be whole HEAD_TIMEOUT seconds after its first
    byte, the whole request REQUEST_TIMEOUT after it, else 408 and the connection closes; a
    connection with nothing pending closes after IDLE_TIMEOUT seconds without a byte. Timers
    tick at half the smallest of the three, so each acts up to that much late."""

    __slots__ = (
        "body",
        "headers",
        "fetch_timeout",
        "idle_timeout",
        "head_timeout",
        "request_timeout",
        "max_pipeline",
        "connections",
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
        connections: int = 10_000,
    ) -> None:
        self.body = body
        self.headers = headers
        self.fetch_timeout = fetch_timeout
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.request_timeout = request_timeout
        self.max_pipeline = max_pipeline
        self.connections = connections
