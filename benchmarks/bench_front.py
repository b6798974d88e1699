"""The serve hot path in one process, without sockets: HTTP parsing, the function's fetch, the
actor turn and its durable commit, the response bytes.

    python benchmarks/bench_front.py [requests]
    python benchmarks/bench_front.py REQUESTS ROW    # one row only: health, spread or hot

The one-row form is for instruction counts, which this VM does not make noisy: run it under
`valgrind --tool=callgrind` at 4,000 and at 12,000 requests, and the difference of the two
totals over 8,000 is the instructions one request costs (setup and warm-up cancel out).

Question answered: how much CPU does the event loop's thread spend per request of the
quick-start example (POST debit) once the kernel's TCP work and the load generator are taken
away; the reference, in the same run, is the same requests served by a function that answers
without an actor (GET /health), and the same debits called directly on the stubs (no HTTP).
64 connections (fake transports that send the next request when a response is written), each
request a whole HTTP/1.1 message, the log on the disk under .bench-data (real fdatasync).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from fastactor import Runtime
from fastactor.server.http import HttpProtocol, Limits

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "bench_front_account", ROOT / "examples" / "account" / "app.py"
)
assert _spec is not None and _spec.loader is not None
app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app)

CONNECTIONS = 64


def request(mode: str) -> bytes:
    if mode == "health":
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    name = "hot" if mode == "hot" else f"acct-{random.randrange(1000)}"
    return (
        f"POST /accounts/{name}/debit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        'Content-Length: 13\r\n\r\n{"amount": 1}'
    ).encode()


class Transport:
    """Counts responses; each one sends the connection's next request (closed loop)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.conn: Any = None

    def write(self, data: bytes) -> None:
        assert data.startswith(b"HTTP/1.1 200"), data[:80]
        self.run.answered()
        if self.run.left > 0:
            self.run.left -= 1
            self.run.loop.call_soon(self.conn.data_received, request(self.run.mode))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Run:
    def __init__(self, mode: str, total: int) -> None:
        self.mode = mode
        self.left = total
        self.pending = total
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()

    def answered(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.done.set_result(None)


async def http_run(env: Any, mode: str, total: int) -> float:
    """Loop-thread CPU seconds per request."""
    run = Run(mode, total)
    conns: set[Any] = set()
    limits = Limits()
    starts = []
    for _ in range(CONNECTIONS):
        t = Transport(run)
        c = HttpProtocol(app.fetch, env, limits, "http://127.0.0.1", conns, {"requests": 0})
        t.conn = c
        c.connection_made(t)
        starts.append(c)
    c0 = time.thread_time()
    for c in starts:
        run.left -= 1
        c.data_received(request(mode))
    await run.done
    return (time.thread_time() - c0) / total


async def direct_run(env: Any, total: int) -> float:
    stubs = [env.ACCOUNT.id_from_name(f"acct-{i}") for i in range(1000)]
    left = [total]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            await stubs[random.randrange(1000)].debit(1)

    c0 = time.thread_time()
    await asyncio.gather(*[caller() for _ in range(CONNECTIONS)])
    return (time.thread_time() - c0) / total


async def main(total: int, only: str | None = None) -> str:
    base = Path(os.environ.get("FASTACTOR_BENCH_DIR", ROOT / ".bench-data"))
    base.mkdir(parents=True, exist_ok=True)
    d = tempfile.mkdtemp(prefix="bench-front-", dir=base)
    try:
        async with Runtime(d, actors={"ACCOUNT": app.Account}) as rt:
            for i in range(1000):
                await rt.env.ACCOUNT.id_from_name(f"acct-{i}").deposit(10**9)
            await rt.env.ACCOUNT.id_from_name("hot").deposit(10**9)
            if only is not None:
                await http_run(rt.env, only, 2000)  # warm-up, the same at every count
                return f"{only}: {await http_run(rt.env, only, total) * 1e6:.1f} µs"
            await http_run(rt.env, "health", total // 10)  # warm-up
            rows = [
                ("GET /health (fetch only, no actor)", await http_run(rt.env, "health", total)),
                ("POST debit over HTTP, 1000 accounts", await http_run(rt.env, "spread", total)),
                ("POST debit over HTTP, one hot account", await http_run(rt.env, "hot", total)),
                ("debit called on the stub (no HTTP)", await direct_run(rt.env, total)),
            ]
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lines = [
        f"host: nproc={os.cpu_count()}, {total:,} requests per row, {CONNECTIONS} connections",
        "",
        "| path | loop-thread CPU per request |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {us * 1e6:.1f} µs |" for name, us in rows]
    return "\n".join(lines)


def test_front(benchmark: Any) -> None:
    table = benchmark.pedantic(lambda: uvloop.run(main(2000)), rounds=1, iterations=1)
    assert "debit called on the stub" in table


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] not in ("health", "spread", "hot"):
        raise SystemExit("bench_front: the row is health, spread or hot")
    print(
        uvloop.run(
            main(
                int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
                sys.argv[2] if len(sys.argv) > 2 else None,
            )
        )
    )
