"""The HTTP front in-process: budgets, refusals, keep-alive after a timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from fastactor import Request, Response
from fastactor.server.http import HttpProtocol, Limits


async def _serve_once(fetch: Any, limits: Limits, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    conns: set[HttpProtocol] = set()
    counters = {"requests": 0}
    server = await loop.create_server(
        lambda: HttpProtocol(fetch, None, limits, "http://t", conns, counters), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    server.close()
    return data


def test_fetch_budget_gives_504_and_the_connection_goes_on() -> None:
    async def fetch(req: Request, env: Any) -> Response:
        if req.path == "/slow":
            await asyncio.sleep(10)
        return Response.text("fast")

    payload = (
        b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    data = uvloop.run(_serve_once(fetch, Limits(fetch_timeout=0.1), payload))
    assert data.startswith(b"HTTP/1.1 504")
    assert data.count(b"HTTP/1.1 ") == 2 and data.endswith(b"fast")


def test_limits_are_configurable_and_refusals_close() -> None:
    async def fetch(req: Request, env: Any) -> Response:
        return Response(await req.body())

    big = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world"
    assert uvloop.run(_serve_once(fetch, Limits(body=10), big)).startswith(b"HTTP/1.1 413")
    ok = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    assert uvloop.run(_serve_once(fetch, Limits(body=10), ok)).endswith(b"\r\n\r\nhello")
    hdr = b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * 200 + b"\r\n\r\n"
    assert uvloop.run(_serve_once(fetch, Limits(headers=100), hdr)).startswith(b"HTTP/1.1 431")
    assert uvloop.run(_serve_once(fetch, Limits(), b"\x00\x01\x02\r\n\r\n")).startswith(
        b"HTTP/1.1 400"
    )


def test_connections_over_the_cap_get_503() -> None:
    async def fetch(req: Request, env: Any) -> Response:
        return Response.text("ok")

    async def go() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        conns: set[HttpProtocol] = set()
        limits = Limits(connections=1)
        server = await loop.create_server(
            lambda: HttpProtocol(fetch, None, limits, "http://t", conns, {"requests": 0}),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        first = await r1.readuntil(b"ok")
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.wait_for(r2.read(), 10)
        w1.close()
        w2.close()
        server.close()
        return first, second

    first, second = uvloop.run(go())
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 503")
