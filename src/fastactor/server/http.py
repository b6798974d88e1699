"""The HTTP/1.1 front: httptools parses, one task per connection answers requests in order
(keep-alive and pipelining), every refusal is a proper status with a short body."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from ..http import Request, Response

__all__ = ["HttpProtocol", "Limits"]

log = logging.getLogger("fastactor.http")

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Limits:
    __slots__ = ("body", "headers", "fetch_timeout", "idle_timeout", "max_pipeline", "connections")

    def __init__(
        self,
        body: int = 10 << 20,
        headers: int = 64 << 10,
        fetch_timeout: float = 30.0,
        idle_timeout: float = 75.0,
        max_pipeline: int = 128,
        connections: int = 10_000,
    ) -> None:
        self.body = body
        self.headers = headers
        self.fetch_timeout = fetch_timeout
        self.idle_timeout = idle_timeout
        self.max_pipeline = max_pipeline
        self.connections = connections


def _error(status: int, message: str) -> Response:
    return Response.json({"error": _REASONS.get(status, "Error"), "message": message}, status)


def encode_response(r: Response, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Status')}\r\n"]
    has_type = False
    for k, v in r.headers.raw():
        lk = k.lower()
        if lk in ("content-length", "connection", "transfer-encoding"):
            continue
        if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
            continue
        has_type = has_type or lk == "content-type"
        head.append(f"{k}: {v}\r\n")
    if not has_type and r.body:
        head.append("content-type: application/octet-stream\r\n")
    head.append(f"content-length: {len(r.body)}\r\n")
    head.append("connection: keep-alive\r\n\r\n" if keep_alive else "connection: close\r\n\r\n")
    return "".join(head).encode("latin-1") + r.body


class HttpProtocol(asyncio.Protocol):
    """One connection. FETCH is ``fetch(request, env)`` of the function served here."""

    def __init__(
        self,
        fetch: Callable[[Request, Any], Awaitable[Response]],
        env: Any,
        limits: Limits,
        base_url: str,
        conns: set[HttpProtocol],
        counters: dict[str, int],
    ) -> None:
        self.fetch = fetch
        self.counters = counters
        self.env = env
        self.limits = limits
        self.base_url = base_url
        self.conns = conns
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[tuple[Request | None, Response | None, bool]] = deque()
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        self.busy = False
        self._reset()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.last_active = 0.0
        self.timed_out = False

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.refused: Response | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        if len(self.conns) >= self.limits.connections:
            # Over the cap: a short answer and goodbye, before any request is read.
            self.closing = True
            transport.write(encode_response(_error(503, "too many connections"), False))  # type: ignore[attr-defined]
            transport.close()
            return
        self.conns.add(self)
        loop = asyncio.get_running_loop()
        self.worker = loop.create_task(self._serve())
        self.last_active = loop.time()
        self.idle_handle = loop.call_later(self.limits.idle_timeout, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        self.closing = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.wakeup.set()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = -1.0  # activity: _idle looks again one period later
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(_error(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as e:
            if self.refused is None:
                self._refuse(_error(400, f"malformed request: {e}"))
            else:
                self._refuse(self.refused)

    def _idle(self) -> None:
        """Runs every idle_timeout: closes the connection if nothing came in since the last
        run and no request is pending (one timer per connection, not one per request)."""
        loop = asyncio.get_running_loop()
        if self.last_active >= 0 and not self.busy and not self.queue:
            if self.transport is not None:
                self.closing = True
                self.transport.close()
            return
        self.last_active = loop.time()
        self.idle_handle = loop.call_later(self.limits.idle_timeout, self._idle)

    def _fetch_timeout(self) -> None:
        self.timed_out = True
        if self.worker is not None:
            self.worker.cancel()

    def _refuse(self, response: Response) -> None:
        """Answers after the requests already queued, then closes: the stream is not
        trustworthy past a refused request."""
        self.closing = True
        self.queue.append((None, response, False))
        self.wakeup.set()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.headers and self.refused is None:
            self.refused = _error(
                431, f"request headers are larger than {self.limits.headers} bytes"
            )
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        for k, v in self.headers:
            if k.lower() == "content-length" and v.isdigit() and int(v) > self.limits.body:
                self.refused = _error(413, f"request body is larger than {self.limits.body} bytes")
                raise httptools.HttpParserError("body too large")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.body:
            self.refused = _error(413, f"request body is larger than {self.limits.body} bytes")
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        method = p.get_method().decode("latin-1")
        keep = p.should_keep_alive()
        try:
            target = self.url.decode("utf-8")
            url = target if target.startswith(("http://", "https://")) else self.base_url + target
            req: Request | None = Request(method, url, self.headers, b"".join(self.body))
            resp = None
        except (UnicodeDecodeError, ValueError) as e:
            req, resp = None, _error(400, f"bad request target: {e}")
        self._reset()
        self.counters["requests"] += 1
        if len(self.queue) >= self.limits.max_pipeline:
            self._refuse(_error(429, "too many pipelined requests"))
            return
        self.queue.append((req, resp, keep))
        self.wakeup.set()

    # -- answering -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            while not self.queue:
                if self.closing:
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
            req, resp, keep = self.queue.popleft()
            if req is not None:
                self.busy = True
                try:
                    resp = await self._answer(req)
                finally:
                    self.busy = False
            assert resp is not None
            last = not keep or (self.closing and not self.queue) or req is None
            if self.transport is None or self.transport.is_closing():
                return
            self.transport.write(encode_response(resp, not last))
            if last:
                self.closing = True
                self.transport.close()
                return
            self.last_active = -1.0

    async def _answer(self, req: Request) -> Response:
        # The budget cancels this connection's task; a timer is cheaper than wait_for's task.
        timer = asyncio.get_running_loop().call_later(
            self.limits.fetch_timeout, self._fetch_timeout
        )
        try:
            r = await self.fetch(req, self.env)
        except asyncio.CancelledError:
            if not self.timed_out:
                raise
            self.timed_out = False
            if self.worker is not None:
                self.worker.uncancel()
            log.warning(
                "%s %s: fetch ran past %g s", req.method, req.path, self.limits.fetch_timeout
            )
            return _error(504, f"fetch ran past {self.limits.fetch_timeout:g} s")
        except Exception as e:
            log.exception("%s %s: fetch raised", req.method, req.path)
            return Response(
                json.dumps(
                    {"error": type(e).__name__, "message": str(e)}, separators=(",", ":")
                ).encode(),
                500,
                [("content-type", "application/json")],
            )
        finally:
            timer.cancel()
        if not isinstance(r, Response):
            log.error("%s %s: fetch returned %r, not a Response", req.method, req.path, r)
            return _error(500, "fetch did not return a Response")
        return r
