"""Calls between shard workers, in one process: two shards, each with its call server on a
Unix socket, and each worker's env routing stubs to the owner (server/ipc.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fastactor import (
    ActorDeadlockError,
    ActorMethodError,
    ActorOutputGateError,
    ActorPrivateMethodError,
    ActorUnknownMethodError,
    CodecError,
    Request,
    Response,
    StatefulActor,
)
from fastactor._core import Shard, _frame_limit
from fastactor.runtime import Env
from fastactor.server.ipc import Channel, RemoteStub, RoutedNamespace, serve_calls
from fastactor.server.layout import owner_of


class Account(StatefulActor):
    # A deadlock the workers missed would end in this budget's timeout, not in 30 s.
    method_timeout = 5.0

    async def debit(self, amount: int) -> dict[str, Any]:
        balance = await self.ctx.storage.get("balance") or 0
        if balance < amount:
            return {"ok": False, "balance": balance}
        await asyncio.sleep(0)  # a real suspension inside the turn
        await self.ctx.storage.put("balance", balance - amount)
        return {"ok": True, "balance": balance - amount}

    async def deposit(self, amount: int) -> int:
        b: int = (await self.ctx.storage.get("balance") or 0) + amount
        await self.ctx.storage.put("balance", b)
        return b

    async def echo(self, *args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs]

    async def nap(self, t: float) -> None:
        await asyncio.sleep(t)

    async def boom(self) -> None:
        raise KeyError("no such thing")

    async def unsendable(self) -> Any:
        return object()

    async def ping(self, path: list[str]) -> list[str]:
        """Calls ping on the first name of PATH with the rest, inside this turn; the names the
        chain went through, and the deadlock error where it stopped."""
        if not path:
            return [self.ctx.id]
        try:
            return [self.ctx.id, *await self.env.ACCOUNT.id_from_name(path[0]).ping(path[1:])]
        except ActorDeadlockError as e:
            return [self.ctx.id, f"deadlock: {e}"]

    async def notify(self, other: str) -> None:
        """Has OTHER call this instance back without awaiting that (fire and forget)."""
        self.pending = self.env.ACCOUNT.id_from_name(other).ping([self.ctx.id])
        await asyncio.sleep(0.05)  # the call back arrives meanwhile, and queues

    async def notified(self) -> Any:
        return await self.pending

    async def fan(self, back: str, other: str) -> Any:
        """Has BACK call this instance back and OTHER ping, at once, and gathers both."""
        ns = self.env.ACCOUNT
        return await asyncio.gather(
            ns.id_from_name(back).ping([self.ctx.id]), ns.id_from_name(other).ping([])
        )

    async def zeros(self, n: int) -> bytes:
        return bytes(n)

    async def fetch(self, request: Request) -> Any:
        if request.path == "/sloppy":
            return {"not": "a Response"}
        body = await request.body()
        return Response.json(
            {"m": request.method, "p": request.path, "q": request.query, "n": len(body)},
            202,
            {"X-Owner": self.ctx.id, "X-Got": request.headers.get("x-test", "")},
        )


class Worker:
    def __init__(self, base: Path, me: int, workers: int) -> None:
        self.me = me
        self.dir = base / f"shard-{me}"
        self.sock = str(base / f"w{me}.sock")
        self.paths = [str(base / f"w{i}.sock") for i in range(workers)]
        self.workers = workers

    async def start(self) -> None:
        self.shard = Shard(str(self.dir), Env({}))
        self.shard.open()
        self.local = self.shard.namespace("Account", Account)
        self.channel = Channel(self.paths)
        self.ns = RoutedNamespace(
            self.local, "default", "Account", self.me, self.workers, self.channel
        )
        self.local.env = Env({"ACCOUNT": self.ns})
        self.server = await serve_calls(self.sock, {"default/Account": self.local})

    async def stop(self) -> None:
        self.server.close()
        self.channel.close()
        await self.shard.close()
        if os.path.exists(self.sock):
            os.unlink(self.sock)


@asynccontextmanager
async def two_workers(tmp: Path) -> AsyncIterator[list[Worker]]:
    ws = [Worker(tmp, i, 2) for i in range(2)]
    for w in ws:
        await w.start()
    try:
        yield ws
    finally:
        for w in ws:
            await w.stop()


def names_of(owner: int, n: int) -> list[str]:
    return [
        f"acct-{i}" for i in range(400) if owner_of("default", "Account", f"acct-{i}", 2) == owner
    ][:n]


def run(tmp: Path, body: Callable[[list[Worker]], Awaitable[None]]) -> None:
    async def go() -> None:
        async with two_workers(tmp) as ws:
            await body(ws)

    uvloop.run(go())


def test_routing_follows_the_partition_layout(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        for i in range(2000):
            name = f"n{i}é"
            owner = owner_of("default", "Account", name, 2)
            for w in ws:
                assert w.ns.owner(name) == owner
                stub = w.ns.id_from_name(name)
                assert isinstance(stub, RemoteStub) == (owner != w.me)
                assert stub.id == name
        with pytest.raises(TypeError):
            ws[0].ns.id_from_name(3)
        with pytest.raises(ValueError):
            ws[0].ns.id_from_name("")
        u = ws[0].ns.new_unique_id()
        assert len(u.id) == 64
        # Durable Objects' spellings route like id_from_name: a stub of the owner's kind.
        for w in ws:
            back = w.ns.id_from_string(u.id)
            assert back == w.ns.id_from_name(u.id) == w.ns.get_by_name(u.id)
            assert w.ns.get(back) is back and w.ns.get(u.id) == back
        with pytest.raises(ValueError, match="not an id new_unique_id made"):
            ws[0].ns.id_from_string("alice")
        with pytest.raises(ValueError, match="stub of another namespace"):
            ws[0].ns.get(ws[1].ns.id_from_name(names_of(0, 1)[0]))

    run(tmp_path, body)


def test_remote_calls_reach_the_owners_one_instance(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        name = names_of(1, 1)[0]
        remote = ws[0].ns.id_from_name(name)
        local = ws[1].ns.id_from_name(name)
        assert isinstance(remote, RemoteStub) and not isinstance(local, RemoteStub)
        assert await remote.deposit(100) == 100
        # The state is the owner's: debits from both workers share the one balance and,
        # one turn at a time, never overdraw it.
        results = await asyncio.gather(*[(remote if i % 2 else local).debit(7) for i in range(40)])
        assert sum(r["ok"] for r in results) == 14
        assert await local.deposit(0) == 100 - 14 * 7
        assert ws[1].shard.is_resident("Account", name)
        assert not ws[0].shard.is_resident("Account", name)
        assert await remote.echo(1, "two", [3], k={"v": None}) == [
            [1, "two", [3]],
            {"k": {"v": None}},
        ]
        # A forwarded call goes where a coroutine goes, as a local one does (test_dispatcher).
        task = asyncio.create_task(remote.deposit(5))
        async with asyncio.TaskGroup() as tg:
            more = [tg.create_task(remote.deposit(1)) for _ in range(3)]
        assert sorted([await task] + [t.result() for t in more]) == [
            100 - 14 * 7 + n for n in (5, 6, 7, 8)
        ]

    run(tmp_path, body)


def test_a_call_chain_crossing_workers_back_into_a_waiting_turn_is_a_deadlock_error(
    tmp_path: Path,
) -> None:
    async def body(ws: list[Worker]) -> None:
        a, c = names_of(0, 2)
        b, d = names_of(1, 2)
        stub = ws[0].ns.id_from_name(a)
        # A (worker 0) calls B (worker 1), which calls A back: found where A lives.
        trail = await stub.ping([b, a])
        assert trail[:2] == [a, b]
        assert trail[2].startswith(f"deadlock: calling Account '{a}' would wait forever")
        assert f"(Account '{a}' → Account '{b}' → Account '{a}')" in trail[2]
        # A, B, D, B: the chain crossed over and back before B is called again.
        trail = await stub.ping([b, c, d, b])
        assert trail[:4] == [a, b, c, d]
        assert f"(Account '{b}' → Account '{c}' → Account '{d}' → Account '{b}')" in trail[4]
        # A gathering the call to B with another one: the call back is found all the same.
        back, other = await stub.fan(b, d)
        assert back[0] == b and other == [d]
        assert f"(Account '{a}' → Account '{b}' → Account '{a}')" in back[1]
        # A call back that A did not await (fire and forget) queues behind A's turn and runs.
        await stub.notify(b)
        assert await stub.notified() == [b, a]
        # No cycle: to and fro between the workers through four instances, either way round.
        assert await stub.ping([b, c, d]) == [a, b, c, d]
        assert await ws[1].ns.id_from_name(d).ping([c, b, a]) == [d, c, b, a]

    run(tmp_path, body)


def test_a_failed_commit_at_the_owner_reaches_the_caller(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        name = names_of(1, 1)[0]
        remote = ws[0].ns.id_from_name(name)
        assert await remote.deposit(10) == 10
        ws[1].shard.wal._inject_fault("fdatasync", 0, errno.EIO)
        # The replies wait for a commit that fails: each caller gets the output gate's error,
        # never the value its turn computed.
        results = await asyncio.gather(
            remote.deposit(1), remote.echo("x"), remote.deposit(1), return_exceptions=True
        )
        assert all(isinstance(r, ActorOutputGateError) for r in results), results
        with pytest.raises(ActorOutputGateError):
            await remote.deposit(1)  # the owner's log takes no more writes
        ws[1].shard.abandon()  # as its worker would be: restarted to recover

    run(tmp_path, body)


def test_remote_errors_are_the_local_ones(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        remote = ws[0].ns.id_from_name(names_of(1, 1)[0])
        with pytest.raises(ActorUnknownMethodError):
            remote.nope()
        with pytest.raises(ActorPrivateMethodError):
            remote._secret()
        with pytest.raises(CodecError):
            remote.echo(object())
        with pytest.raises(ActorMethodError) as e:
            await remote.boom()
        assert e.value.remote_type == "KeyError" and "no such thing" in str(e.value)
        assert isinstance(e.value, KeyError)  # a built-in error is rethrown as itself too
        assert type(e.value).__name__ == "ActorMethodError"
        with pytest.raises(CodecError):
            await remote.unsendable()
        # Past the largest frame (1 GiB; 1 MiB here): CodecError for the call or the reply,
        # and the channel, which the frame would have broken, goes on.
        limit = _frame_limit()
        _frame_limit(1 << 20)
        try:
            with pytest.raises(CodecError, match="larger than a call between workers"):
                remote.echo(b"x" * (2 << 20))
            with pytest.raises(CodecError, match="larger than a call between workers"):
                await remote.zeros(2 << 20)  # the reply
        finally:
            _frame_limit(limit)
        assert await remote.deposit(1) == 1  # the channel goes on after errors

    run(tmp_path, body)


def test_remote_fetch(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        name = names_of(1, 1)[0]
        remote = ws[0].ns.id_from_name(name)
        big = b"x" * (3 << 20)  # crosses many socket reads
        req = Request("POST", "http://h/p/q?a=1", [("X-Test", "yes")], big)
        r = await remote.fetch(req)
        assert isinstance(r, Response) and r.status == 202
        assert r.headers["x-owner"] == name and r.headers["x-got"] == "yes"
        assert r.body == b'{"m":"POST","p":"/p/q","q":{"a":"1"},"n":3145728}'
        # As a Durable Object's stub.fetch(url, init): a URL and the request's parts.
        r = await remote.fetch("http://h/u?a=2", method="PUT", headers={"X-Test": "u"}, body="b")
        assert r.ok and r.headers["x-got"] == "u"
        assert await r.json() == {"m": "PUT", "p": "/u", "q": {"a": "2"}, "n": 1}
        with pytest.raises(TypeError, match="a Request or a URL"):
            remote.fetch(b"not a request")
        with pytest.raises(TypeError, match="takes no method"):
            remote.fetch(req, method="GET")
        with pytest.raises(ValueError, match="is not a URL"):
            remote.fetch("not a url")
        with pytest.raises(TypeError, match="Account.fetch returned dict, not a Response"):
            await remote.fetch(Request("GET", "http://h/sloppy"))

    run(tmp_path, body)


def test_a_peer_going_away_fails_its_calls_and_the_next_call_reconnects(
    tmp_path: Path,
) -> None:
    async def body(ws: list[Worker]) -> None:
        name = names_of(1, 1)[0]
        remote = ws[0].ns.id_from_name(name)
        assert await remote.deposit(5) == 5
        in_flight = asyncio.ensure_future(remote.nap(0.5))
        # More calls in flight, one queued behind in_flight on its instance: the owner's
        # close ends the running ones and refuses the queued one (it waited for ever).
        also = [asyncio.ensure_future(ws[0].ns.id_from_name(n).nap(0.5)) for n in names_of(1, 3)]
        await asyncio.sleep(0.1)
        await ws[1].stop()
        with pytest.raises(ActorOutputGateError):
            await in_flight  # it may or may not have run: the caller is told so
        errors = await asyncio.gather(*also, return_exceptions=True)
        assert all(isinstance(e, ActorOutputGateError) for e in errors), errors
        assert len({id(e) for e in errors}) == 3  # each caller its own (and its traceback)
        # A call made while the owner is down waits for it to come back (same data).
        later = asyncio.ensure_future(remote.deposit(1))
        await asyncio.sleep(0.2)
        assert not later.done()
        await ws[1].start()
        assert await later == 6

    run(tmp_path, body)


def test_garbage_on_the_call_socket_closes_that_connection_only(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        loop = asyncio.get_running_loop()
        for junk in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x01\x05"):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            await loop.sock_connect(s, ws[1].sock)
            await loop.sock_sendall(s, junk)
            assert await asyncio.wait_for(loop.sock_recv(s, 100), 5) == b""  # closed
            s.close()
        remote = ws[0].ns.id_from_name(names_of(1, 1)[0])
        assert await remote.deposit(3) == 3

    run(tmp_path, body)


def test_a_peer_that_does_not_read_its_replies_is_not_read_either(tmp_path: Path) -> None:
    async def body(ws: list[Worker]) -> None:
        from fastactor._core import encode_value

        loop = asyncio.get_running_loop()
        name = names_of(1, 1)[0]
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        await loop.sock_connect(s, ws[1].sock)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        before = ws[1].shard.stats["turns"]
        big = b"y" * 65536
        sent = 0
        for i in range(1, 3000):  # calls whose replies (64 KiB each) are never read
            data = encode_value([i, "default/Account", name, 0, "echo", [big], None, None])
            try:
                s.send(len(data).to_bytes(4, "big") + data)
            except BlockingIOError:
                break
            sent += 1
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        ran = ws[1].shard.stats["turns"] - before
        s.close()
        # The owner stopped taking calls once its replies backed up (a few MiB), long
        # before all the calls were sent; and it still serves the other worker.
        assert ran < 300 and sent > ran, (ran, sent)
        assert await ws[0].ns.id_from_name(name).deposit(2) == 2

    run(tmp_path, body)
