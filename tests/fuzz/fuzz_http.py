"""Fuzzes the HTTP front: any bytes, split into any chunks, sent on one connection. No
exception escapes the protocol or its task, every request that arrived whole gets an answer or
the connection closes after a refusal, every answer is a well-formed HTTP/1.1 response.

    python tests/fuzz/fuzz_http.py tests/fuzz/corpus/http -max_total_time=60
"""

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memtransport import drive  # noqa: E402

with atheris.instrument_imports():
    import uvloop

    from fastactor import Request, Response
    from fastactor.server.http import HttpProtocol, Limits, bodies_held  # noqa: F401

STATUS = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")
LOOP = uvloop.new_event_loop()
ERRORS: list[Any] = []
LOOP.set_exception_handler(lambda loop, ctx: ERRORS.append(ctx))
LIMITS = Limits(body=4096, headers=2048, fetch_timeout=5.0)


async def fetch(req: Request, env: Any) -> Response:
    # Touch every part of the request the way a function would.
    body = await req.body()
    _ = (req.method, req.path, req.url, dict(req.query), list(req.headers.items()))
    # A HEAD answer has no body: the header tells check_responses so.
    head = {"x-head": "1"} if req.method == "HEAD" else None
    if req.path.startswith("/json"):
        try:
            await req.json()
        except ValueError:
            return Response.json({"error": "bad json"}, 400, head)
    return Response.json({"path": req.path, "n": len(body)}, headers=head)


def check_responses(out: bytes) -> int:
    """The number of final answers in OUT, which must be HTTP/1.1 responses back to back
    (100 Continue before some)."""
    n = 0
    while out:
        m = STATUS.match(out)
        assert m, out[:200]
        head_end = out.index(b"\r\n\r\n") + 4
        if out.startswith(b"HTTP/1.1 100 "):
            assert head_end == len(m.group(0)) + 2, out[:200]  # nothing but the status line
            out = out[head_end:]
            continue
        length = int(re.search(rb"content-length: (\d+)\r\n", out[:head_end]).group(1))
        out = out[head_end + (0 if b"\r\nx-head: 1\r\n" in out[:head_end] else length) :]
        n += 1
    return n


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chunks = []
    while fdp.remaining_bytes():
        chunks.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512)))

    async def run() -> None:
        t, p = await drive(fetch, LIMITS, chunks, "http://fuzz")
        assert not p.queue or p.busy or t.closed or t.eof, "requests left unanswered"
        answered = check_responses(bytes(t.out))
        assert answered <= p.counters["requests"] + 1
        # The bodies it holds came in these bytes (none here is large enough to be counted
        # ahead from its Content-Length), and all of them are given back once it closes.
        assert 0 <= bodies_held() <= sum(map(len, chunks)), bodies_held()
        p.connection_lost(None)
        assert bodies_held() == 0, bodies_held()
        await asyncio.sleep(0)
        if p.idle_handle is not None:
            p.idle_handle.cancel()

    LOOP.run_until_complete(run())
    assert not ERRORS, ERRORS


if __name__ == "__main__":
    # The native code is not instrumented (that needs clang's -fsanitize=fuzzer-no-link):
    # coverage comes from the Python code, this harness (and its model) included.
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
