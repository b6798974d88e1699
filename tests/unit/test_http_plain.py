"""The front's own reader of plain requests against httptools: for any bytes, cut anywhere,
the connection answers exactly as it does when httptools reads every byte."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastactor import Request, Response
from fastactor._core import _plain_parsing
from fastactor.server.http import Limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memtransport import drive  # noqa: E402

DATE = re.compile(rb"date: [^\r\n]*\r\n")
LIMITS = Limits(body=64, headers=256, max_pipeline=6)


async def fetch(req: Request, env: Any) -> Response:
    """Echoes all a function sees of the request; /wait suspends first."""
    if req.path == "/wait":
        await asyncio.sleep(0)
    seen = {
        "method": req.method,
        "url": req.url,
        "path": req.path,
        "query": req.query,
        "headers": list(req.headers.items()),
        "body": (await req.body()).decode("latin-1"),
    }
    return Response.json(seen)


@contextlib.contextmanager
def plain_parsing(on: bool) -> Iterator[None]:
    """The front reads plain requests itself (ON) or hands every byte to httptools."""
    was = _plain_parsing()
    _plain_parsing(on)
    try:
        yield
    finally:
        _plain_parsing(was)


def serve(chunks: list[bytes], plain: bool) -> tuple[bytes, bool, int]:
    """(what the connection wrote, Date lines taken out; whether it closed; requests read)."""

    async def run() -> tuple[bytes, bool, int]:
        t, p = await drive(fetch, LIMITS, chunks, "http://t")
        p.connection_lost(None)
        if p.idle_handle is not None:
            p.idle_handle.cancel()
        return DATE.sub(b"", bytes(t.out)), t.closed or t.eof, p.counters["requests"]

    with plain_parsing(plain):
        return uvloop.run(run())


# A method httptools does not know gets 501 if the refused request begins a chunk the front
# reads; past requests httptools read itself, where the refused one began is not known, and it
# gets 400. Reading plain requests itself, the front knows it more often: the same refusal.
UNKNOWN = re.compile(
    rb"HTTP/1\.1 (501 Not Implemented|400 Bad Request)\r\n[^{]*"
    rb'\{"error":"[^"]*","message":"(method [^"]* is not supported|malformed request: Invalid '
    rb'method encountered)"\}'
)


def both(chunks: list[bytes]) -> tuple[bytes, bool, int]:
    mine = serve(chunks, True)
    ref = serve(chunks, False)
    if mine != ref:
        assert UNKNOWN.sub(b"<unknown method>", mine[0]) == UNKNOWN.sub(
            b"<unknown method>", ref[0]
        ), (mine, ref)
        assert mine[1:] == ref[1:]
    return mine


METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"OPTIONS", b"get", b"FOO"]
TARGETS = [b"/", b"/wait", b"/a/b?x=1&y=2#frag", b"/%41?q", b"*", b"http://h/x", b"/\xc3\xa9"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]
NAMES = [
    b"Host",
    b"host",
    b"X-A",
    b"Content-Length",
    b"content-LENGTH",
    b"Connection",
    b"Transfer-Encoding",
    b"Expect",
    b"Upgrade",
    b"Proxy-Connection",
    b"Bad Name",
    b"",
]
VALUES = [
    b"t",
    b"",
    b"  spaced  ",
    b"a\tb",
    b"\xe9",
    b"close",
    b"Keep-Alive",
    b"keep-alive",
    b"0",
    b"5",
    b"05",
    b" 5",
    b"5 ",
    b"-1",
    b"99",
    b"99999999999999999999",
    b"chunked",
    b"100-continue",
    b"websocket",
    b"x" * 300,
]
EOLS = [b"\r\n"] * 8 + [b"\n", b"\r"]
# Request.url is "http://" and the Host where that is a plain authority, else the listener's.
HOSTS = [b"t", b"t", b"example.com:8080", b"[::1]:80", b"a/b", b"u@h", b"", b"h\xe9", b"x?y"]


@st.composite
def requests(draw: Any) -> bytes:
    eol = st.sampled_from(EOLS)
    out = draw(st.sampled_from(METHODS)) + draw(st.sampled_from([b" ", b" ", b"  "]))
    out += draw(st.sampled_from(TARGETS)) + b" " + draw(st.sampled_from(VERSIONS)) + draw(eol)
    if draw(st.booleans()):
        out += b"Host: " + draw(st.sampled_from(HOSTS)) + draw(eol)
    for _ in range(draw(st.integers(0, 4))):
        out += draw(st.sampled_from(NAMES)) + b":" + draw(st.sampled_from([b" ", b""]))
        out += draw(st.sampled_from(VALUES)) + draw(eol)
    out += draw(eol)
    return out + draw(st.binary(max_size=8))


@st.composite
def streams(draw: Any) -> list[bytes]:
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=5)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=4))))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_any_stream_is_answered_as_httptools_reads_it(chunks: list[bytes]) -> None:
    both(chunks)


def test_plain_requests_are_read_whole_in_any_cut() -> None:
    data = (
        b"POST /wait?a=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nX-Tab:\ta b \r\n\r\nhello"
        b"GET /b HTTP/1.1\r\nhost: t\r\nConnection: keep-alive\r\n\r\n"
        b"DELETE /c HTTP/1.1\r\nHOST: t\r\nConnection: Close\r\n\r\n"
        b"GET /after-close HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    whole = both([data])
    out, closed, n = whole
    assert n == 3 and closed
    assert out.count(b"HTTP/1.1 200 OK") == 3 and b"after-close" not in out
    assert b'["x-tab","a b "]' in out and b'"body":"hello"' in out
    for cut in range(1, len(data)):
        assert both([data[:cut], data[cut:]]) == whole


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * 300 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab", b"400"),
        (b"BREW / HTTP/1.1\r\nHost: t\r\n\r\n", b"501"),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", b"505"),
        (b"GET / HTTP/0.9\r\nHost: t\r\n\r\n", b"505"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nExpect: x\r\n\r\n", b"417"),
    ],
)
def test_refusals_are_the_same_after_a_plain_request(data: bytes, status: bytes) -> None:
    first = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    out, closed, _ = both([first + data])
    assert out.startswith(b"HTTP/1.1 200 OK") and closed
    assert out.count(b"\r\nconnection: ") == 2 and b"}HTTP/1.1 " + status in out


@pytest.mark.parametrize("plain", [True, False])
@pytest.mark.parametrize("split", [False, True])
def test_bytes_after_a_request_that_closes_get_a_fin_not_a_reset(plain: bool, split: bool) -> None:
    # The client is still sending: closing at once could reset the connection and destroy the
    # answer before the client reads it. A FIN goes after the answer, and the rest is dropped.
    first = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    more = b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n"

    async def run() -> tuple[Any, Any]:
        go = asyncio.Event()

        async def slow(req: Request, env: Any) -> Response:
            await go.wait()  # the answer waits until every chunk is in
            return Response.text(req.path)

        t, p = await drive(slow, LIMITS, [first, more] if split else [first + more], "http://t")
        assert not t.out
        go.set()
        for _ in range(5):
            await asyncio.sleep(0)
        p.connection_lost(None)
        if p.idle_handle is not None:
            p.idle_handle.cancel()
        return t, p

    with plain_parsing(plain):
        t, p = uvloop.run(run())
    assert t.eof and not t.closed and p.counters["requests"] == 1
    assert bytes(t.out).count(b"HTTP/1.1 200 OK") == 1 and b"/never" not in bytes(t.out)


@pytest.mark.parametrize("plain", [True, False])
def test_the_url_names_the_host_the_client_asked_for(plain: bool) -> None:
    hosts = [b"api.example.com", b"api.example.com", b"[::1]:8080", b"a/b", b"u@h", b"h\xe9"]
    chunks = [b"GET /p?q=1 HTTP/1.1\r\nHost: " + h + b"\r\n\r\n" for h in hosts]
    chunks.append(b"GET /last HTTP/1.0\r\n\r\n")  # no Host: the listener's address
    out = serve(chunks, plain)[0]
    urls = re.findall(rb'"url":"([^"]*)"', out)
    assert urls == [
        b"http://api.example.com/p?q=1",
        b"http://api.example.com/p?q=1",
        b"http://[::1]:8080/p?q=1",
        b"http://t/p?q=1",
        b"http://t/p?q=1",
        b"http://t/p?q=1",
        b"http://t/last",
    ]
