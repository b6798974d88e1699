"""The four guarantees and the RPC surface, in one process (SPEC §1, §2, §5)."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import io
import random
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import uvloop

import fastactor
from fastactor import (
    ActorDeadlockError,
    ActorFetchTimeoutError,
    ActorMethodError,
    ActorMethodTimeoutError,
    ActorOutputGateError,
    ActorPrivateMethodError,
    ActorUnknownMethodError,
    BlockConcurrencyTimeoutError,
    CodecError,
    Request,
    Response,
    Runtime,
    StatefulActor,
)
from fastactor.testing import RuntimeFactory, crash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from taskprobe import watch_pending  # noqa: E402

LOG: list[tuple[str, str]] = []


class Account(StatefulActor):
    async def debit(self, amount: int) -> dict[str, Any]:
        balance = await self.ctx.storage.get("balance") or 0
        if balance < amount:
            return {"ok": False, "balance": balance}
        await self.ctx.storage.put("balance", balance - amount)
        return {"ok": True, "balance": balance - amount}

    async def deposit(self, amount: int) -> int:
        b: int = (await self.ctx.storage.get("balance") or 0) + amount
        await self.ctx.storage.put("balance", b)
        return b

    async def balance(self) -> int:
        return await self.ctx.storage.get("balance") or 0

    async def slow_step(self, tag: str, delay: float) -> str:
        LOG.append(("start", tag))
        await asyncio.sleep(delay)
        LOG.append(("end", tag))
        return tag

    async def echo(self, *args: Any, **kwargs: Any) -> Any:
        return [args, kwargs]

    async def one_arg(self, x: int) -> int:
        return x

    async def sleepy(self, t: float) -> str:
        await self.ctx.storage.put("sleepy", "written")
        await asyncio.sleep(t)
        return "awake"

    async def unsendable(self) -> Any:
        return object()

    def sync_method(self) -> str:
        return "plain"

    async def _private(self) -> None:
        pass

    async def fetch(self, request: Request) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(5)
        n = await self.deposit(int(request.query.get("n", "0")))
        return Response.json({"name": self.ctx.id, "balance": n})

    async def call_other(self, other: str) -> Any:
        stub = self.env.ACCOUNT.id_from_name(other)
        return await stub.deposit(1)


class Slow(StatefulActor):
    starts = 0

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        Slow.starts += 1
        self.ready = False
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        delay = await self.ctx.storage.get("delay") or 0
        await asyncio.sleep(delay)
        self.ready = True

    async def is_ready(self) -> bool:
        return self.ready

    async def set_delay(self, d: float) -> None:
        await self.ctx.storage.put("delay", d)


class Ring(StatefulActor):
    # A deadlock the runtime missed would end in this budget's timeout, not in 30 s.
    method_timeout = 5.0

    async def ping(self, path: list[str], nap: bool = False) -> list[str]:
        """Calls ping on the first name of PATH with the rest, inside this turn; the names the
        chain went through, and the deadlock error where it stopped."""
        if nap:
            await asyncio.sleep(0.001)  # the rest of the turn runs in a Task
        await self.ctx.storage.put("pings", (await self.ctx.storage.get("pings") or 0) + 1)
        if not path:
            return [self.ctx.id]
        try:
            return [self.ctx.id, *await self.env.RING.id_from_name(path[0]).ping(path[1:], nap)]
        except ActorDeadlockError as e:
            return [self.ctx.id, f"deadlock: {e}"]

    async def call_back(self, other: str) -> Any:
        """Has OTHER call this instance back (OTHER does not catch the error): what this
        turn gets."""
        try:
            return await self.env.RING.id_from_name(other).poke(self.ctx.id)
        except ActorMethodError as e:
            return [isinstance(e, ActorDeadlockError), e.remote_type, str(e)]

    async def poke(self, name: str) -> int:
        return len(await self.env.RING.id_from_name(name).ping([]))

    async def notify(self, other: str, then: str) -> None:
        """Has OTHER call this instance back without awaiting that (fire and forget), then
        awaits a call to THEN (or a sleep): this turn never waits on the call back."""
        self.pending = self.env.RING.id_from_name(other).ping([self.ctx.id])
        if then:
            await self.env.RING.id_from_name(then).ping([])
        else:
            await asyncio.sleep(0.01)

    async def notified(self) -> Any:
        return await self.pending

    async def fan(self, names: list[str], back: str, how: str) -> Any:
        """Calls ping([]) on each of NAMES and ping([self]) on BACK, all at once, and awaits
        them HOW: "gather" (all of them), "first" (the call back, the first one made, once the
        others are done; "wait_for": the same through asyncio.wait_for; "shield": through
        asyncio.shield; "wait": through an asyncio.wait for it and a sleep, all completed) or
        "others" (only the others: the call back is never awaited)."""
        others = [self.env.RING.id_from_name(n) for n in names]
        first = self.env.RING.id_from_name(back).ping([self.ctx.id])
        if how == "gather":
            return await asyncio.gather(first, *[o.ping([]) for o in others])
        done = [await o.ping([]) for o in others]
        if how == "others":
            self.pending = first
            return done
        if how == "wait_for":
            return [await asyncio.wait_for(first, 4), *done]
        if how == "shield":
            return [await asyncio.shield(first), *done]
        if how == "wait":  # asyncio.wait takes Tasks, not what a call returns (a coroutine)
            nap = asyncio.create_task(asyncio.sleep(0.01))
            await asyncio.wait([asyncio.create_task(first), nap])
            return [first.result(), *done]
        return [await first, *done]

    async def _ping_back(self, back: str) -> Any:
        return await self.env.RING.id_from_name(back).ping([self.ctx.id])

    async def in_tasks(self, back: str, how: str) -> Any:
        """Calls ping([self]) on BACK from a Task this turn starts, and awaits it HOW: "task"
        (create_task, then await it), "call" (create_task of the call itself), "nested" (a
        Task awaiting the Task that calls), "gather"
        (gather over coroutines: Tasks of their own, one of them sleeping first), "group" (a
        TaskGroup), "shield" (the Task through asyncio.shield), "wait_for" (the Task awaits
        the call through wait_for) or "later" (the Task calls while the turn sleeps, and the
        turn ends without awaiting it)."""
        if how == "task":
            return [await asyncio.create_task(self._ping_back(back))]
        if how == "nested":  # a Task starting the Task that calls: two steps to the call

            async def outer() -> Any:
                return await asyncio.create_task(self._ping_back(back))

            return [await asyncio.create_task(outer())]
        if how == "call":
            return [
                await asyncio.create_task(self.env.RING.id_from_name(back).ping([self.ctx.id]))
            ]
        if how == "shield":
            return [await asyncio.shield(asyncio.create_task(self._ping_back(back)))]
        if how == "gather":
            return await asyncio.gather(asyncio.sleep(0.01, "slept"), self._ping_back(back))
        if how == "group":
            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(self._ping_back(back))
            return [t.result()]
        if how == "wait_for":

            async def bounded() -> Any:
                return await asyncio.wait_for(self._ping_back(back), 4)

            return [await asyncio.create_task(bounded())]
        self.pending = asyncio.create_task(self._ping_back(back))
        await asyncio.sleep(0.02)
        return []

    async def race(self, back: str) -> Any:
        """Calls ping([self]) on BACK and awaits whichever ends first, that call or a short
        sleep (asyncio.wait, FIRST_COMPLETED): the sleep does, and the call back, not refused,
        runs once this turn is over."""
        first = self.env.RING.id_from_name(back).ping([self.ctx.id])
        call, nap = asyncio.create_task(first), asyncio.create_task(asyncio.sleep(0.05))
        done, _ = await asyncio.wait([call, nap], return_when=asyncio.FIRST_COMPLETED)
        self.pending = first
        return [call in done, nap in done]

    async def pings(self) -> int:
        return await self.ctx.storage.get("pings") or 0


class Starter(StatefulActor):
    """Its activation's block_concurrency_while calls the Opener of its own name."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.seen: Any = None
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        try:
            self.seen = await self.env.OPENER.id_from_name(self.ctx.id).ping([])
        except ActorDeadlockError as e:
            self.seen = f"deadlock: {e}"

    async def seen_at_start(self) -> Any:
        return self.seen


class Opener(Ring):
    async def open_starter(self) -> Any:
        return await self.env.STARTER.id_from_name(self.ctx.id).seen_at_start()


def run(
    factory: RuntimeFactory,
    fn: Callable[[Runtime], Awaitable[Any]],
    *actors: type[StatefulActor],
    **opts: Any,
) -> Any:
    async def go() -> Any:
        async with factory(*(actors or (Account,)), **opts) as rt:
            return await fn(rt)

    return uvloop.run(go())


def acct(rt: Runtime, name: str = "alice") -> Any:
    return rt.namespace("Account").id_from_name(name)


def test_one_call_at_a_time_even_across_awaits(actor_runtime: RuntimeFactory) -> None:
    LOG.clear()

    async def go(rt: Runtime) -> None:
        a = acct(rt)
        got = await asyncio.gather(
            a.slow_step("1", 0.02), a.slow_step("2", 0.0), a.slow_step("3", 0.01)
        )
        assert got == ["1", "2", "3"]
        assert LOG == [
            ("start", "1"),
            ("end", "1"),
            ("start", "2"),
            ("end", "2"),
            ("start", "3"),
            ("end", "3"),
        ]
        # Different instances do run in parallel.
        LOG.clear()
        await asyncio.gather(a.slow_step("a", 0.02), acct(rt, "bob").slow_step("b", 0.0))
        assert LOG.index(("end", "b")) < LOG.index(("end", "a"))

    run(actor_runtime, go)


def test_ten_thousand_concurrent_debits_never_overdraw(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        a = acct(rt)
        await a.deposit(2500)
        results = await asyncio.gather(*(a.debit(1) for _ in range(10_000)))
        assert sum(r["ok"] for r in results) == 2500
        assert all(r["balance"] >= 0 for r in results)
        assert await a.balance() == 0
        st = rt.stats()
        assert st["commits"] == 2501
        # Turns pipeline behind the output gate: far fewer fdatasyncs than turns.
        assert rt.shard.wal.batches < 1000

    run(actor_runtime, go)


def test_a_call_goes_wherever_asyncio_takes_a_coroutine(actor_runtime: RuntimeFactory) -> None:
    # What stub.method(...) returns is taken where an async def method's coroutine is:
    # await, gather, wait_for, create_task, a TaskGroup, as_completed; asyncio.wait wants
    # Tasks, as it does of coroutines. The call is made at once, awaited or not.
    async def go(rt: Runtime) -> None:
        names = [f"fan-{i}" for i in range(6)]
        tasks = [asyncio.create_task(acct(rt, n).deposit(10)) for n in names]
        assert [await t for t in tasks] == [10] * 6
        async with asyncio.TaskGroup() as tg:
            group = [tg.create_task(acct(rt, n).debit(3)) for n in names]
        assert [t.result()["balance"] for t in group] == [7] * 6
        assert await asyncio.wait_for(acct(rt, names[0]).deposit(1), 5) == 8
        ends = [await f for f in asyncio.as_completed([acct(rt, n).deposit(0) for n in names])]
        assert sorted(ends) == [7] * 5 + [8]
        with pytest.raises(TypeError, match="use tasks explicitly"):
            await asyncio.wait([acct(rt, names[1]).deposit(1)])
        done, _ = await asyncio.wait([asyncio.create_task(acct(rt, names[1]).deposit(1))])
        assert [t.result() for t in done] == [9]  # the refused wait's call ran all the same
        # A failed call fails its Task; a cancelled Task leaves the call to run to its end.
        with pytest.raises(ActorMethodError):
            await asyncio.create_task(acct(rt, names[2]).one_arg())  # its argument missing
        slow = asyncio.create_task(acct(rt, names[3]).slow_step("s", 0.05))
        await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await acct(rt, names[3]).slow_step("t", 0.0) == "t"
        call = acct(rt, names[4]).balance()
        assert isinstance(call, fastactor.CallFuture) and isinstance(call, asyncio.Future)
        assert "stub call" in repr(asyncio.create_task(call))
        async with anyio.create_task_group() as atg:  # anyio's start_soon wants a coroutine
            for n in names[4:]:
                atg.start_soon(acct(rt, n).deposit, 100)
        assert [await acct(rt, n).balance() for n in names[4:]] == [107, 107]

    run(actor_runtime, go)


def test_replies_wait_for_durability(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        a = acct(rt)
        wal = rt.shard.wal
        for i in range(50):
            await a.deposit(1)
            assert wal.durable_lsn >= wal.last_lsn
            # A read-only turn that saw un-flushed data waits as well.
            fut1 = a.deposit(1)
            fut2 = a.balance()
            assert await fut2 == i * 2 + 2
            assert wal.durable_lsn >= wal.last_lsn
            await fut1

    run(actor_runtime, go)


def test_the_commit_window_ends_at_its_record_count(actor_runtime: RuntimeFactory) -> None:
    # A 1 s window that four commits end at once when its count is 4. At the default count
    # (16) the same four sit out a quarter of the window with no new record, 250 ms at least.
    async def go(rt: Runtime) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(acct(rt, f"w{i}").deposit(1) for i in range(4)))
        return loop.time() - t0

    assert run(actor_runtime, go, group_window_us=1_000_000) >= 0.25
    assert run(actor_runtime, go, group_window_us=1_000_000, group_window_records=4) < 0.25


def test_failed_commit_turns_replies_into_output_gate_errors(
    actor_runtime: RuntimeFactory,
) -> None:
    async def go() -> None:
        rt = actor_runtime(Account)
        await rt.start()
        a = acct(rt)
        await a.deposit(10)
        rt.shard.wal._inject_fault("fdatasync", 0, errno.EIO)
        results = await asyncio.gather(
            a.deposit(1), a.balance(), a.deposit(1), return_exceptions=True
        )
        assert all(isinstance(r, ActorOutputGateError) for r in results), results
        with pytest.raises(ActorOutputGateError):
            await a.deposit(1)  # the log takes no more writes
        crash(rt)
        async with actor_runtime(Account) as rt2:
            assert await acct(rt2).balance() in (10, 11, 12)  # never acknowledged either way
            assert await acct(rt2).deposit(5) >= 15

    uvloop.run(go())


def test_rpc_errors(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        a = acct(rt)
        with pytest.raises(ActorPrivateMethodError):
            await a._private()
        for name in ("_load", "alarm"):
            with pytest.raises(ActorPrivateMethodError):
                await getattr(a, name)()
        with pytest.raises(ActorUnknownMethodError):
            await a.no_such_method()
        with pytest.raises(ActorMethodError) as ei:
            await a.one_arg(1, 2)
        assert ei.value.remote_type == "TypeError"
        with pytest.raises(TypeError):  # the same error: built-in types are kept, as in DO
            await a.one_arg(1, 2)
        with pytest.raises(CodecError):
            await a.echo(object())
        with pytest.raises(CodecError):
            await a.unsendable()
        assert await a.echo(1, (2,), k={3}) == [(1, (2,)), {"k": {3}}]
        assert await a.sync_method() == "plain"
        assert await a.deposit(1) == 1  # still serving

    run(actor_runtime, go)


def test_close_refuses_the_calls_still_queued(actor_runtime: RuntimeFactory) -> None:
    """Closing lets the running turn end; calls queued behind it never start and are told
    so (close used to wait on them for ever)."""

    class Napper(StatefulActor):
        async def nap(self, t: float) -> float:
            await asyncio.sleep(t)
            return t

    async def go() -> list[Any]:
        async with actor_runtime(Napper) as rt:
            n = rt.namespace("Napper").id_from_name("n")
            futs = [asyncio.ensure_future(n.nap(0.2)) for _ in range(3)]
            await asyncio.sleep(0.05)
        return await asyncio.gather(*futs, return_exceptions=True)

    results = uvloop.run(asyncio.wait_for(go(), 10))
    assert results[0] == 0.2
    for r in results[1:]:
        assert isinstance(r, RuntimeError) and "closed before this call started" in str(r)
    assert results[1] is not results[2]


def test_refused_method_names_cost_nothing_kept(actor_runtime: RuntimeFactory) -> None:
    """Each refused call raises an error of its own (one error raised again would grow its
    traceback, and the frames it holds, with every raise), and names that are not methods,
    such as a client's passed on by a fetch, are not remembered."""

    def depth(e: BaseException) -> int:
        n, tb = 0, e.__traceback__
        while tb is not None:
            n, tb = n + 1, tb.tb_next
        return n

    async def go(rt: Runtime) -> None:
        a = acct(rt)
        for name in ("no_such_method", "_private"):
            errors = []
            for _ in range(3):
                try:
                    await getattr(a, name)()
                except (ActorUnknownMethodError, ActorPrivateMethodError) as e:
                    errors.append(e)
            assert len({id(e) for e in errors}) == 3
            assert depth(errors[0]) == depth(errors[2])
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(5000):
                with pytest.raises(ActorUnknownMethodError):
                    await getattr(a, f"made_up_{i}")()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert kept < 200_000, kept  # 5,000 names with their errors were 5 MB
        assert await a.deposit(1) == 1

    run(actor_runtime, go)


def test_arguments_and_results_are_copies(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        arg = [1, [2]]
        res = await acct(rt).echo(arg)
        arg[1].append(3)
        assert res == [([1, [2]],), {}]

    run(actor_runtime, go)


def test_method_timeout_keeps_the_instance_up(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        a = acct(rt)
        with pytest.raises(ActorMethodTimeoutError):
            await a.sleepy(5)
        assert await a.sleepy(0) == "awake"
        assert await a.deposit(3) == 3

    run(actor_runtime, go, method_timeout=0.1)


def test_timed_out_turn_commits_nothing(actor_runtime: RuntimeFactory) -> None:
    class T(StatefulActor):
        async def hang(self) -> None:
            await self.ctx.storage.put("k", 1)
            await asyncio.sleep(10)

        async def get(self) -> Any:
            return await self.ctx.storage.get("k")

    async def go(rt: Runtime) -> None:
        t = rt.namespace("T").id_from_name("t")
        with pytest.raises(ActorMethodTimeoutError):
            await t.hang()
        assert await t.get() is None

    run(actor_runtime, go, T, method_timeout=0.05)


class Stubborn(StatefulActor):
    """hold() catches the cancellation its timeout sends and goes on until RELEASE is set;
    then it tries to write (LATE gets the outcome)."""

    RELEASE: asyncio.Event | None = None
    LATE: list[str] = []

    async def hold(self) -> None:
        self.mark = "old activation"
        await self.ctx.storage.put("held", 1)
        while True:
            try:
                assert Stubborn.RELEASE is not None
                await Stubborn.RELEASE.wait()
                break
            except asyncio.CancelledError:
                pass
        try:
            await self.ctx.storage.put("late", 1)
            Stubborn.LATE.append("stored")
        except RuntimeError as e:
            Stubborn.LATE.append(str(e))

    async def put(self, value: int) -> Any:
        await self.ctx.storage.put("v", value)
        return getattr(self, "mark", None)

    async def read(self) -> Any:
        return [await self.ctx.storage.get(k) for k in ("held", "v", "late")]


def test_a_timed_out_turn_that_catches_its_cancellation_is_left_behind(
    actor_runtime: RuntimeFactory,
) -> None:
    # Its task goes on after the budget's cancellation. The instance waits for it
    # stuck_grace seconds, then lets it go: the calls waiting run on a new activation, the
    # old code can no longer reach the storage, and close() does not wait for it. Before,
    # the instance (and close) waited for it for ever.
    Stubborn.LATE.clear()

    async def first() -> None:
        Stubborn.RELEASE = asyncio.Event()
        rt = actor_runtime(Stubborn, method_timeout=0.05)
        await rt.start()
        rt.shard.stuck_grace = 0.3
        s = rt.namespace("Stubborn").id_from_name("s")
        began = asyncio.get_running_loop().time()
        with pytest.raises(ActorMethodTimeoutError):
            await s.hold()
        assert await asyncio.wait_for(s.put(2), 10) is None  # a new activation
        assert 0.3 <= asyncio.get_running_loop().time() - began < 5
        assert rt.stats()["turns_left_behind"] == 1
        assert await s.read() == [None, 2, None]
        await asyncio.wait_for(rt.close(), 10)
        Stubborn.RELEASE.set()
        for _ in range(500):  # its next step: after the wait it was let out of
            if Stubborn.LATE:
                break
            await asyncio.sleep(0.01)
        assert "outside of a turn" in Stubborn.LATE[0]

    async def second() -> None:
        async with actor_runtime(Stubborn) as rt:
            assert await rt.namespace("Stubborn").id_from_name("s").read() == [None, 2, None]

    uvloop.run(first())
    uvloop.run(second())


def test_a_class_sets_its_own_budgets(actor_runtime: RuntimeFactory) -> None:
    class Quick(StatefulActor):
        method_timeout = 0.05
        fetch_timeout = 0.05
        block_timeout = 0.05

        async def nap(self, s: float) -> str:
            await asyncio.sleep(s)
            return "awake"

        async def fetch(self, request: Request) -> Response:
            await asyncio.sleep(1)
            return Response.text("late")

    class Patient(StatefulActor):  # keeps the runtime's budgets
        async def nap(self, s: float) -> str:
            await asyncio.sleep(s)
            return "awake"

    class SlowStart(StatefulActor):
        block_timeout = 0.05

        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            ctx.block_concurrency_while(self._load)

        async def _load(self) -> None:
            await asyncio.sleep(1)

        async def hi(self) -> str:
            return "hi"

    async def go(rt: Runtime) -> None:
        assert rt.namespace("Quick").method_timeout == 0.05
        assert rt.namespace("Patient").method_timeout == 0.5
        quick = rt.namespace("Quick").id_from_name("q")
        with pytest.raises(ActorMethodTimeoutError, match=r"Quick\.nap ran past 0\.05 s"):
            await quick.nap(0.3)
        assert await quick.nap(0) == "awake"  # the instance stays up
        with pytest.raises(ActorFetchTimeoutError, match=r"Quick\.fetch ran past 0\.05 s"):
            await quick.fetch(Request("GET", "http://x/"))
        # 0.3 s is past Quick's budget, inside the runtime's 0.5 s.
        assert await rt.namespace("Patient").id_from_name("p").nap(0.3) == "awake"
        with pytest.raises(BlockConcurrencyTimeoutError, match=r"0\.05 s"):
            await rt.namespace("SlowStart").id_from_name("s").hi()

    run(actor_runtime, go, Quick, Patient, SlowStart, method_timeout=0.5)


async def _no_info(self: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("attr", "value", "error", "message"),
    [
        ("method_timeout", "5", TypeError, "Bad.method_timeout must be a number of seconds"),
        ("fetch_timeout", True, TypeError, "Bad.fetch_timeout must be a number of seconds"),
        ("alarm_timeout", 0, ValueError, "Bad.alarm_timeout must be a finite number > 0"),
        ("block_timeout", float("inf"), ValueError, "Bad.block_timeout must be a finite"),
        ("alarm_retry", 3, TypeError, "Bad.alarm_retry must be a fastactor.AlarmRetry"),
        ("alarm", _no_info, TypeError, r"Bad\.alarm\(self\) must take \(self, info\)"),
        ("fetch", _no_info, TypeError, r"Bad\.fetch\(self\) must take \(self, request\)"),
        ("__init__", _no_info, TypeError, r"Bad\.__init__\(self\) must take \(self, ctx, env\)"),
        ("fetch", None, TypeError, r"Bad\.fetch must be a method taking \(self, request\)"),
    ],
)
def test_bad_class_settings_are_refused_when_the_type_is_registered(
    actor_runtime: RuntimeFactory, attr: str, value: Any, error: type[Exception], message: str
) -> None:
    Bad = type("Bad", (StatefulActor,), {attr: value})

    async def go(rt: Runtime) -> None:
        raise AssertionError("the runtime started")

    with pytest.raises(error, match=message):
        run(actor_runtime, go, Bad)

    # Nothing stays open: the same directory starts again at once (its log's lock is free).
    async def again(rt: Runtime) -> Any:
        return await acct(rt).deposit(1)

    assert run(actor_runtime, again, Account) == 1


def test_fetch_and_fetch_timeout(actor_runtime: RuntimeFactory) -> None:
    class Plain(StatefulActor):
        pass

    class Sloppy(StatefulActor):
        async def fetch(self, request: Request) -> Any:
            await self.ctx.storage.put("seen", True)
            return {"not": "a Response"}

        async def seen(self) -> Any:
            return await self.ctx.storage.get("seen")

    async def go(rt: Runtime) -> None:
        a = acct(rt, "carol")
        r = await a.fetch(Request("GET", "http://x/deposit?n=4"))
        assert r.status == 200 and r.body == b'{"name":"carol","balance":4}'
        r = await a.fetch("http://x/deposit?n=3")  # a URL, as a Durable Object's stub takes
        assert r.ok and await r.json() == {"name": "carol", "balance": 7}
        with pytest.raises(TypeError, match="a Request or a URL"):
            a.fetch(5)
        with pytest.raises(TypeError, match="takes no method"):
            a.fetch(Request("GET", "http://x/"), method="POST")
        with pytest.raises(ActorFetchTimeoutError):
            await a.fetch(Request("GET", "http://x/slow"))
        r = await rt.namespace("Plain").id_from_name("p").fetch(Request("GET", "http://x/"))
        assert r.status == 404
        # A fetch that returns something else fails as if it raised TypeError: nothing commits.
        s = rt.namespace("Sloppy").id_from_name("s")
        with pytest.raises(TypeError, match="Sloppy.fetch returned dict, not a Response"):
            await s.fetch(Request("GET", "http://x/"))
        assert await s.seen() is None

    run(actor_runtime, go, Account, Plain, Sloppy, fetch_timeout=0.1)


def test_block_concurrency_while(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        # _load really suspends (asyncio.sleep); the calls queued behind it still see it done.
        ns = rt.namespace("Slow")
        s = ns.id_from_name("s")
        starts = Slow.starts
        assert await asyncio.gather(s.is_ready(), s.set_delay(0.01), s.is_ready()) == [
            True,
            None,
            True,
        ]
        assert Slow.starts == starts + 1

    run(actor_runtime, go, Slow)


def test_block_concurrency_timeout_tears_down_and_retries(actor_runtime: RuntimeFactory) -> None:
    class Init(StatefulActor):
        tries = 0

        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            Init.tries += 1
            ctx.block_concurrency_while(self._init)

        async def _init(self) -> None:
            if Init.tries == 1:
                await asyncio.sleep(5)

        async def ping(self) -> int:
            return Init.tries

    async def go(rt: Runtime) -> None:
        i = rt.namespace("Init").id_from_name("i")
        results = await asyncio.gather(i.ping(), i.ping(), return_exceptions=True)
        assert all(isinstance(r, BlockConcurrencyTimeoutError) for r in results), results
        assert await i.ping() == 2  # activated afresh

    run(actor_runtime, go, Init, block_timeout=0.1)


_who = contextvars.ContextVar("who", default="caller")


def test_a_turn_is_its_own_task_not_its_callers(actor_runtime: RuntimeFactory) -> None:
    """A turn starts in the caller's step (no task is made unless it suspends), yet asyncio
    sees it as a task of its own from the first line: asyncio.timeout and TaskGroup inside a
    method cancel the method, never the caller, and its context variables stay its own."""

    class Waiter(StatefulActor):
        async def timeout_fires(self) -> str:
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(5)
            except TimeoutError:
                return "timed out"
            return "slept"

        async def group_fails(self) -> str:
            async def fail() -> None:
                await asyncio.sleep(0.01)
                raise KeyError("child")

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(fail())
                    tg.create_task(asyncio.sleep(5))
            except BaseExceptionGroup as eg:
                return f"child failed: {[type(e).__name__ for e in eg.exceptions]}"
            return "no failure"

        async def tasks(self, suspend: bool) -> list[Any]:
            first = asyncio.current_task()
            _who.set("turn")
            if suspend:
                await asyncio.sleep(0)
            return [first is not None, first is asyncio.current_task(), first.get_name()]

        async def with_anyio(self) -> str:
            with anyio.fail_after(5):  # a cancel scope must exit in the task that entered it
                await anyio.sleep(0.001)
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0.001)
            with anyio.move_on_after(0.01) as scope:
                await anyio.sleep(5)
            return f"cancelled: {scope.cancelled_caught}"

    async def go(rt: Runtime) -> None:
        w = rt.namespace("Waiter").id_from_name("w")
        caller = asyncio.current_task()
        assert await w.timeout_fires() == "timed out"
        assert await w.group_fails() == "child failed: ['KeyError']"
        assert caller is not None and not caller.cancelling()
        for suspend in (False, True):
            here, same, name = await w.tasks(suspend)
            assert here and same and "Waiter" in name and name != caller.get_name()
        assert _who.get() == "caller"  # the method's set() stayed in the method
        assert await w.with_anyio() == "cancelled: True"
        await asyncio.sleep(0.05)
        assert not caller.cancelling()

    run(actor_runtime, go, Waiter)


class Overdrawn(Exception):
    pass


def test_a_raised_error_keeps_its_built_in_type(actor_runtime: RuntimeFactory) -> None:
    """As Durable Objects' RPC does: a built-in error the method raised reaches the caller
    as itself (and as ActorMethodError); a user's own class only as ActorMethodError. Through
    a method that lets another instance's error pass, the class is the one first raised."""

    class Raiser(StatefulActor):
        async def raise_(self, kind: str) -> None:
            raise {"overdrawn": Overdrawn, "value": ValueError, "os": FileNotFoundError}[kind](
                "no"
            )

        async def relay(self, kind: str) -> None:
            await self.env.RAISER.id_from_name("r").raise_(kind)

    async def go(rt: Runtime) -> None:
        r = rt.namespace("Raiser").id_from_name("r")
        with pytest.raises(ValueError) as ei:
            await r.raise_("value")
        assert isinstance(ei.value, ActorMethodError) and ei.value.remote_type == "ValueError"
        assert str(ei.value) == "Raiser.raise_ raised ValueError: no"
        with pytest.raises(FileNotFoundError):
            await r.raise_("os")
        with pytest.raises(ActorMethodError) as ei:
            await r.raise_("overdrawn")
        assert ei.value.remote_type == "Overdrawn"
        assert type(ei.value) is ActorMethodError  # not a built-in: nothing to keep
        relay = rt.namespace("Raiser").id_from_name("relay")
        with pytest.raises(ValueError) as ei:
            await relay.relay("value")
        assert isinstance(ei.value, ActorMethodError) and ei.value.remote_type == "ValueError"
        assert str(ei.value) == (
            "Raiser.relay raised ValueError: Raiser.raise_ raised ValueError: no"
        )
        with pytest.raises(ActorMethodError) as ei:
            await relay.relay("overdrawn")
        assert ei.value.remote_type == "Overdrawn"

    run(actor_runtime, go, Raiser)


def test_constructor_error_reaches_the_caller(actor_runtime: RuntimeFactory) -> None:
    class Broken(StatefulActor):
        def __init__(self, ctx: Any, env: Any) -> None:
            raise LookupError("no config")

        async def ping(self) -> None:
            pass

    async def go(rt: Runtime) -> None:
        with pytest.raises(ActorMethodError) as ei:
            await rt.namespace("Broken").id_from_name("b").ping()
        assert ei.value.remote_type == "LookupError"

    run(actor_runtime, go, Broken)


def test_stubs_and_names(actor_runtime: RuntimeFactory) -> None:
    class Other(StatefulActor):
        pass

    async def go(rt: Runtime) -> None:
        ns = rt.namespace("Account")
        a = ns.id_from_name("alice")
        assert a.id == "alice" and a == ns.id_from_name("alice")
        u1, u2 = ns.new_unique_id(), ns.new_unique_id()
        assert len(u1.id) == 64 and int(u1.id, 16) >= 0 and u1.id != u2.id
        assert await u1.deposit(7) == 7 and await u2.balance() == 0
        with pytest.raises(ValueError):
            ns.id_from_name("")
        with pytest.raises(ValueError, match="lone surrogate"):  # no log record can hold it
            ns.id_from_name("bad\udcff")
        with pytest.raises(TypeError):
            ns.id_from_name(5)
        assert await ns.id_from_name("\u00e9\U0001f600 \0x").deposit(1) == 1  # any other str
        # ... of at most 2048 UTF-8 bytes (as a storage key).
        for ok in ("n" * 2048, "\u00e9" * 1024, "\U0001f600" * 512):
            assert await ns.id_from_name(ok).deposit(2) == 2
        for long in ("n" * 2049, "\u00e9" * 1024 + "n", "\U0001f600" * 513, "n" * 70_000):
            with pytest.raises(ValueError, match="longer than 2048 UTF-8 bytes"):
                ns.id_from_name(long)
        assert await a.call_other("bob") == 1 and await acct(rt, "bob").balance() == 1
        assert rt.env.ACCOUNT is ns
        # Durable Objects' spellings: get_by_name, id_from_string of a stored unique id, get.
        assert ns.get_by_name("alice") == a and ns.get(a) is a and ns.get("bob").id == "bob"
        back = ns.id_from_string(u1.id)
        assert back == u1 and await back.balance() == 7
        for bad in ("alice", u1.id.upper(), u1.id[:-1], u1.id + "0"):
            with pytest.raises(ValueError, match="not an id new_unique_id made"):
                ns.id_from_string(bad)
        with pytest.raises(TypeError):
            ns.id_from_string(5)
        with pytest.raises(ValueError, match="stub of another namespace"):
            rt.namespace("Other").get(a)
        with pytest.raises(TypeError, match="get takes a stub"):
            ns.get(5)

    run(actor_runtime, go, Account, Other)


_trace = contextvars.ContextVar("trace", default=None)


def test_a_turn_is_a_task_to_asyncio(actor_runtime: RuntimeFactory) -> None:
    # What libraries ask of the current task: its context, name, coroutine and stack, both in
    # a turn's first step and after it suspended (a Task carries it on then).
    class Probe(StatefulActor):
        async def probe(self) -> list[Any]:
            out = []
            for _ in range(2):
                t = asyncio.current_task()
                assert t is not None
                _trace.set(len(out))
                buf = io.StringIO()
                t.print_stack(file=buf)
                out.append(
                    [
                        t.get_context().get(_trace),
                        t.get_name(),
                        t.get_coro().__name__,
                        "probe" in [f.f_code.co_name for f in t.get_stack()],
                        len(t.get_stack(limit=1)),
                        "in probe" in buf.getvalue() and t.get_name() in buf.getvalue(),
                        t.done(),
                    ]
                )
                await asyncio.sleep(0)
            return out

    async def go(rt: Runtime) -> None:
        first, later = await rt.namespace("Probe").id_from_name("p").probe()
        assert first == [0, "turn of Probe 'p'", "probe", True, 1, True, False]
        assert later == [1, "turn of Probe 'p'", "probe", True, 1, True, False]

    run(actor_runtime, go, Probe)


def test_a_turns_task_runs_done_callbacks_with_its_outcome(
    actor_runtime: RuntimeFactory,
) -> None:
    # A turn that ends in its first step and one a Task carries on: either way the callbacks
    # get the turn's own task, done, with the method's result or exception.
    seen: list[Any] = []

    def record(task: Any) -> None:
        exc = task.exception()
        seen.append((task.get_name(), task.done(), task.cancelled(), repr(exc)))
        if exc is None:
            seen.append(task.result())

    class Probe(StatefulActor):
        async def run(self, suspend: bool, fail: bool) -> str:
            t = asyncio.current_task()
            assert t is not None
            if suspend:
                await asyncio.sleep(0)  # a Task carries the turn from here
            watch_pending(t, record, seen)
            if fail:
                raise ValueError("no")
            return f"ran {suspend}"

    async def go(rt: Runtime) -> None:
        p = rt.namespace("Probe").id_from_name("p")
        assert await p.run(False, False) == "ran False"
        assert await p.run(True, False) == "ran True"
        for suspend in (False, True):
            with pytest.raises(ActorMethodError):
                await p.run(suspend, True)
        await asyncio.sleep(0.01)

    run(actor_runtime, go, Probe)
    name = "turn of Probe 'p'"
    no = repr(ValueError("no"))
    assert seen == [
        (name, True, False, "None"),
        "ran False",
        (name, True, False, "None"),
        "ran True",
        (name, True, False, no),
        (name, True, False, no),
    ]


def test_a_lone_surrogate_is_a_codec_error_wherever_it_is(actor_runtime: RuntimeFactory) -> None:
    # The same refusal whether the instance lives in this worker (arguments are copied) or in
    # another (they are encoded into a frame): a str no UTF-8 can hold, at any depth.
    class Echo(StatefulActor):
        async def echo(self, x: Any) -> Any:
            return x

        async def bad(self) -> str:
            return "ok\ud800"

    async def go(rt: Runtime) -> None:
        e = rt.namespace("Echo").id_from_name("e")
        for arg in ("a\ud800", ("\udc00",), ["x", "\udfff"], {"k": "\ud800"}, {"\ud800": 1}):
            with pytest.raises(CodecError, match="lone surrogate"):
                await e.echo(arg)
            with pytest.raises(CodecError, match="lone surrogate"):
                await e.echo(x=arg)
        with pytest.raises(CodecError, match="result of Echo.bad can not be sent"):
            await e.bad()
        assert await e.echo("\u00e9\U0001f600") == "\u00e9\U0001f600"  # any other str

    run(actor_runtime, go, Echo)


def test_eviction_then_lazy_reload(actor_runtime: RuntimeFactory) -> None:
    class Cached(StatefulActor):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            self.field = "fresh"

        async def set(self, v: int) -> None:
            self.field = "changed"
            await self.ctx.storage.put("v", v)

        async def get(self) -> Any:
            return [self.field, await self.ctx.storage.get("v")]

    async def go(rt: Runtime) -> None:
        c = rt.namespace("Cached").id_from_name("c")
        await c.set(42)
        assert await c.get() == ["changed", 42]
        assert rt.shard.is_resident("Cached", "c")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not rt.shard.is_resident("Cached", "c"):
                break
        assert not rt.shard.is_resident("Cached", "c")
        assert rt.stats()["evictions"] >= 1
        assert await c.get() == ["fresh", 42]  # fields are a cache; storage is not

    run(actor_runtime, go, Cached, idle_timeout=0.1)


@pytest.mark.parametrize("bound", [20, 0])
def test_past_max_resident_the_least_recently_used_idle_instances_go(
    actor_runtime: RuntimeFactory, bound: int
) -> None:
    # Names called once each (a crawler, a hostile client) must not fill memory for the
    # idle timeout's whole minute.
    async def go(rt: Runtime) -> None:
        busy = asyncio.ensure_future(acct(rt, "busy").slow_step("b", 0.5))
        await asyncio.sleep(0.01)  # its call has started: the least recently used of all
        for i in range(60):
            assert await acct(rt, f"a{i:02}").deposit(i) == i
        await asyncio.sleep(0)  # a trim asked for by the last instance made runs
        resident = [
            n for n in (f"a{i:02}" for i in range(60)) if rt.shard.is_resident("Account", n)
        ]
        if bound == 0:  # no bound: only the idle timer evicts
            assert len(resident) == 60 and rt.stats()["evictions"] == 0
        else:
            assert rt.stats()["resident"] <= bound
            assert resident == [f"a{i:02}" for i in range(60 - len(resident), 60)]
            assert rt.stats()["evictions"] >= 60 - bound
        assert rt.shard.is_resident("Account", "busy")  # in a call: never evicted
        assert await busy == "b"
        # What they stored stays on disk, and they come back when called.
        assert [await acct(rt, f"a{i:02}").balance() for i in range(60)] == list(range(60))

    run(actor_runtime, go, max_resident=bound)


class Blob(StatefulActor):
    async def put(self, key: str, n: int) -> None:
        await self.ctx.storage.put(key, b"x" * n)

    async def size(self, key: str) -> int:
        v = await self.ctx.storage.get(key)
        return -1 if v is None else len(v)

    async def delete(self, key: str) -> None:
        await self.ctx.storage.delete(key)

    async def wipe(self) -> None:
        await self.ctx.storage.delete_all()

    async def hold(self, t: float) -> None:
        await asyncio.sleep(t)


def test_the_cache_is_counted_in_bytes_as_values_come_and_go(
    actor_runtime: RuntimeFactory,
) -> None:
    async def go(rt: Runtime) -> None:
        b = rt.namespace("Blob").id_from_name("b")

        def cached() -> int:
            return int(rt.stats()["cache_bytes"])

        assert cached() == 0
        await b.put("a", 1000)
        big = cached()
        assert 1000 < big < 1200  # the encoded value, its key, and what CPython adds
        await b.put("a", 10)
        assert 10 < cached() < 200
        await b.delete("a")
        assert 0 < cached() < 100  # the key stays cached, as absent
        await b.put("a", 1000)
        await b.put("c", 1000)
        assert cached() == 2 * big
        await b.wipe()
        assert cached() == 0
        await b.put("a", 1000)
        assert rt.evict_idle() == 1 and cached() == 0
        assert await b.size("a") == 1000  # read back from disk: cached again
        assert cached() == big
        # A key found absent is cached too (the next get of it reads no disk), and counts.
        assert await b.size("nothing") == -1 and big < cached() < big + 200

    run(actor_runtime, go, Blob)


def test_past_max_cache_bytes_the_least_recently_used_idle_instances_go(
    actor_runtime: RuntimeFactory,
) -> None:
    # Few names with large values must not fill memory either: the bound counts the cached
    # values' bytes, not only instances.
    bound = 100_000

    async def go(rt: Runtime) -> None:
        ns = rt.namespace("Blob")
        await ns.id_from_name("big").put("v", 60_000)
        holding = asyncio.ensure_future(ns.id_from_name("big").hold(0.5))
        await asyncio.sleep(0.01)  # in a call: it can not go, though least recently used
        for i in range(20):
            await ns.id_from_name(f"s{i:02}").put("v", 10_000)
            await asyncio.sleep(0)  # a trim asked for runs
            assert rt.stats()["cache_bytes"] <= bound + 10_200
        assert rt.shard.is_resident("Blob", "big")
        assert rt.shard.is_resident("Blob", "s19")
        assert not rt.shard.is_resident("Blob", "s00")
        assert rt.stats()["evictions"] >= 14
        await holding
        # What they stored stays on disk, and they come back when called.
        sizes = [await ns.id_from_name(f"s{i:02}").size("v") for i in range(20)]
        assert sizes == [10_000] * 20
        await asyncio.sleep(0)
        assert rt.stats()["cache_bytes"] <= bound

    run(actor_runtime, go, Blob, max_cache_bytes=bound)


def test_keys_looked_up_and_absent_count_against_max_cache_bytes(
    actor_runtime: RuntimeFactory,
) -> None:
    # One name asked for key after key it does not have (a client making keys up) caches
    # each as absent: once those counted for nothing, and the cache grew without bound.
    bound = 100_000

    async def go(rt: Runtime) -> None:
        b = rt.namespace("Blob").id_from_name("b")
        await b.put("v", 100)
        for i in range(3000):  # each entry about 90 bytes: 270 KB in all
            assert await b.size(f"missing-{i}") == -1
            await asyncio.sleep(0)  # a trim asked for runs
            assert rt.stats()["cache_bytes"] <= bound + 200
        assert rt.stats()["evictions"] >= 2
        assert await b.size("v") == 100  # evicted, not lost

    run(actor_runtime, go, Blob, max_cache_bytes=bound)


def test_a_cached_key_counts_what_its_str_holds_whatever_its_characters(
    actor_runtime: RuntimeFactory,
) -> None:
    # A str holds 1, 2 or 4 bytes a character, by its widest, and a non-ASCII one its UTF-8
    # form too once encoded (msgspec and sqlite3 both leave it there): a key of 500 emoji
    # holds 4 KB, and counting it as 500 bytes let such keys fill a worker past the bound.
    async def go(rt: Runtime) -> None:
        b = rt.namespace("Blob").id_from_name("b")
        for ch in ("k", "é", "€", "😀"):
            key = ch * 500  # at most 2000 UTF-8 bytes: a key may have 2048
            msgspec.msgpack.encode(key)  # what the runtime's own keys go through
            before = int(rt.stats()["cache_bytes"])
            assert await b.size(key) == -1  # cached as absent: the key alone
            grew = int(rt.stats()["cache_bytes"]) - before
            assert sys.getsizeof(key) < grew < sys.getsizeof(key) + 64, ch

    run(actor_runtime, go, Blob)


@pytest.mark.parametrize("seed", range(4))
def test_the_cache_count_never_drifts_from_what_the_caches_hold(
    actor_runtime: RuntimeFactory, seed: int
) -> None:
    # The bound is checked against a count kept up to date at each change, never recounted:
    # a change it missed would grow (the bound then evicting for nothing) or shrink (the
    # bound no longer holding) for as long as the worker runs. Random puts, reads of present
    # and absent keys, deletes, wipes, evictions and trims, over a few instances; after each
    # step the count must equal what the caches hold.
    rnd = random.Random(seed)

    async def go(rt: Runtime) -> None:
        ns = rt.namespace("Blob")
        for step in range(600):
            b = ns.id_from_name(f"b{rnd.randrange(6)}")
            key = f"k{rnd.randrange(12)}" + rnd.choice("xé€😀") * rnd.choice([0, 0, 40, 500])
            op = rnd.random()
            if op < 0.35:
                await b.put(key, rnd.choice([0, 3, 100, 3000]))
            elif op < 0.7:
                await b.size(key)
            elif op < 0.85:
                await b.delete(key)
            elif op < 0.92:
                await b.wipe()
            elif op < 0.96:
                rt.evict_idle()
            else:
                await asyncio.gather(*(ns.id_from_name(f"b{i}").size(key) for i in range(6)))
            await asyncio.sleep(0)  # a trim asked for runs
            counted, held, drifted = rt.shard.cache_audit()
            assert (counted, drifted) == (held, []), f"step {step}"
        assert rt.stats()["evictions"] > 0

    run(actor_runtime, go, Blob, max_cache_bytes=20_000)


def test_near_max_resident_an_instance_in_use_is_not_the_one_evicted(
    actor_runtime: RuntimeFactory,
) -> None:
    # Recency is kept per sweep tick (15 s) to save the bookkeeping on each call; near the
    # bound it is kept per call, else an account in constant use, made first, would be the
    # first evicted and reloaded again and again.
    made: list[str] = []

    class Counted(Account):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            made.append(ctx.id)

    async def go(rt: Runtime) -> None:
        ns = rt.namespace("Counted")
        hot = ns.id_from_name("hot")
        for i in range(100):
            await hot.deposit(1)
            await ns.id_from_name(f"once{i}").deposit(1)
        assert await hot.balance() == 100
        assert made.count("hot") == 1  # never evicted, so made once
        assert rt.stats()["resident"] <= 20 and rt.stats()["evictions"] >= 80

    run(actor_runtime, go, Counted, max_resident=20)


def test_restart_recovers_from_snapshot_and_log_tail(actor_runtime: RuntimeFactory) -> None:
    async def go() -> None:
        async with actor_runtime(Account) as rt:
            for i in range(20):
                await acct(rt, f"u{i}").deposit(i)
            await rt.checkpoint()
            for i in range(10):
                await acct(rt, f"u{i}").deposit(100)
            await acct(rt, "u19").debit(19)
            rt2_dir = rt.data_dir
            crash(rt)  # no final checkpoint: the tail must be replayed
        async with Runtime(rt2_dir, [Account]) as rt2:
            assert rt2.stats()["replayed_records"] == 11
            for i in range(20):
                want = i + (100 if i < 10 else 0) - (19 if i == 19 else 0)
                assert await acct(rt2, f"u{i}").balance() == want
        async with Runtime(rt2_dir, [Account]) as rt3:  # after a clean close: no tail
            assert rt3.stats()["replayed_records"] == 0
            assert await acct(rt3, "u5").balance() == 105

    uvloop.run(go())


def test_crash_loses_only_unacknowledged_turns(actor_runtime: RuntimeFactory) -> None:
    async def go() -> None:
        rt = actor_runtime(Account)
        await rt.start()
        a = acct(rt)
        acked = [await a.deposit(1) for _ in range(30)]
        pending = [a.deposit(1) for _ in range(5)]  # not awaited: never acknowledged
        crash(rt)
        for p in pending:
            p.cancel()
        async with actor_runtime(Account) as rt2:
            assert acked[-1] <= await acct(rt2).balance() <= 35

    uvloop.run(go())


def test_damaged_data_directory_is_a_clear_error(actor_runtime: RuntimeFactory) -> None:
    from fastactor import LogCorruptionError

    async def seed() -> None:
        async with actor_runtime(Account) as rt:
            await acct(rt).deposit(1)

    async def reopen() -> None:
        async with actor_runtime(Account):
            pass

    uvloop.run(seed())
    snapshot = actor_runtime.data_dir / "state.sqlite3"
    good = snapshot.read_bytes()
    snapshot.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LogCorruptionError, match="state.sqlite3"):
        uvloop.run(reopen())
    snapshot.write_bytes(good)
    # A log that was replaced by a fresh one is behind the snapshot.
    import shutil

    shutil.rmtree(actor_runtime.data_dir / "log")
    with pytest.raises(LogCorruptionError, match="behind|replaced"):
        uvloop.run(reopen())


def test_the_spec_example_imports_and_runs(actor_runtime: RuntimeFactory) -> None:
    from fastactor import AlarmInfo

    class Example(StatefulActor):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            ctx.block_concurrency_while(self._load)

        async def _load(self) -> None:
            self.loaded = await self.ctx.storage.get("n", 0)

        async def bump(self) -> int:
            self.loaded += 1
            await self.ctx.storage.put("n", self.loaded)
            return self.loaded

        async def alarm(self, info: AlarmInfo) -> None:
            pass

    async def go(rt: Runtime) -> None:
        e = rt.namespace("Example").id_from_name("e")
        assert [await e.bump() for _ in range(3)] == [1, 2, 3]
        with pytest.raises(ActorPrivateMethodError):
            await e.alarm(AlarmInfo(0, False))
        assert AlarmInfo().retry_count == 0 and AlarmInfo(2, True).is_retry

    run(actor_runtime, go, Example)


def test_evicting_a_burst_of_instances_gives_their_table_back(
    actor_runtime: RuntimeFactory,
) -> None:
    """The table of resident instances is sized again once most of them are evicted: a dict
    keeps the table of its largest size, which after a burst of 30,000 names held 1.3 MB for
    none (tracemalloc counts what is still allocated)."""
    import gc
    import tracemalloc

    class Pinged(StatefulActor):
        async def ping(self) -> None:
            return None

    async def go(rt: Runtime) -> None:
        ns = rt.namespace("Pinged")
        await ns.id_from_name("warm-up").ping()
        rt.evict_idle()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(30_000):
                await ns.id_from_name(f"n{i}").ping()
            assert rt.evict_idle() == 30_000
            gc.collect()
            left = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert left < 300_000, left

    run(actor_runtime, go, Pinged)


def test_a_kept_stub_does_not_pin_an_evicted_instance(actor_runtime: RuntimeFactory) -> None:
    import gc
    import weakref

    class Big(StatefulActor):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            self.blob = bytearray(1 << 20)

        async def ping(self) -> int:
            return len(self.blob)

    refs: list[Any] = []

    class Probe(Big):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            refs.append(weakref.ref(self))

    async def go(rt: Runtime) -> None:
        stub = rt.namespace("Probe").id_from_name("p")  # kept for the whole test
        assert await stub.ping() == 1 << 20
        assert rt.evict_idle() == 1
        gc.collect()
        assert refs[0]() is None, "the evicted actor object is freed"
        assert await stub.ping() == 1 << 20  # and comes back on demand
        assert len(refs) == 2

    run(actor_runtime, go, Probe)


def test_a_call_back_into_a_waiting_turn_is_a_deadlock_error_at_once(
    actor_runtime: RuntimeFactory,
) -> None:
    async def go(rt: Runtime) -> None:
        ring = rt.namespace("Ring")
        a = ring.id_from_name("a")
        for nap in (False, True):  # the calling turn still in its first step, or in a Task
            # An instance calling itself through a stub.
            trail = await a.ping(["a"], nap)
            assert trail[0] == "a" and trail[1].startswith("deadlock: calling Ring 'a' would")
            assert "(Ring 'a' → Ring 'a')" in trail[1]
            # A calls B, which calls A back; C calls D, which calls E, which calls D.
            trail = await a.ping(["b", "a"], nap)
            assert trail[:2] == ["a", "b"] and "(Ring 'a' → Ring 'b' → Ring 'a')" in trail[2]
            trail = await ring.id_from_name("c").ping(["d", "e", "d"], nap)
            assert trail[:3] == ["c", "d", "e"]
            assert "(Ring 'd' → Ring 'e' → Ring 'd')" in trail[3]
            # No cycle: a chain through five instances, and each back the other way later.
            assert await a.ping(["b", "c", "d", "e"], nap) == ["a", "b", "c", "d", "e"]
            assert await ring.id_from_name("e").ping(["d", "c", "b", "a"], nap) == [
                "e",
                "d",
                "c",
                "b",
                "a",
            ]
        # Not caught by the method: the caller gets it, as the error the method raised.
        caught, remote_type, message = await a.call_back("b")
        assert caught and remote_type == "ActorDeadlockError"
        assert message.startswith("Ring.poke raised ActorDeadlockError: calling Ring 'a'")
        # The refused calls ran nothing (each ping that ran wrote once): A's own pings, twice
        # over, were the self-call's outer one, A-B-A's outer one, the chain and its reverse.
        assert await a.pings() == 2 * 4
        # An activation's block_concurrency_while calling back the instance that called it.
        seen = await rt.namespace("Opener").id_from_name("x").open_starter()
        assert seen.startswith("deadlock: calling Opener 'x' would")
        assert "(Opener 'x' → Starter 'x' → Opener 'x')" in seen
        # A call back into a turn that made its call without awaiting it only queues: that
        # turn ends, then the call back runs (whatever the turn awaits meanwhile).
        for then in ("", "c"):
            await a.notify("b", then)
            assert await a.notified() == ["b", "a"]
        # A cycle through one of several calls in flight: awaited with gather, or awaited
        # after the later calls are done; each call back ran nothing.
        before = await ring.id_from_name("b").pings()
        for how in ("gather", "first", "wait_for", "wait", "shield"):
            trails = await a.fan(["c", "d"], "b", how)
            (back,) = [t for t in trails if t[0] == "b"]
            assert sorted(trails) == [back, ["c"], ["d"]]
            assert back[1].startswith("deadlock: calling Ring 'a' would"), back
            assert "(Ring 'a' → Ring 'b' → Ring 'a')" in back[1]
        assert await ring.id_from_name("b").pings() == before + 5
        # Through Tasks the turn started: their calls carry its chain.
        for how in ("task", "call", "nested", "gather", "group", "wait_for", "shield"):
            trails = await a.in_tasks("b", how)
            back = trails[-1]
            assert back[0] == "b" and back[1].startswith("deadlock: calling Ring 'a' would")
            assert "(Ring 'a' → Ring 'b' → Ring 'a')" in back[1], (how, back)
        assert (await a.in_tasks("b", "gather"))[0] == "slept"
        assert await a.in_tasks("b", "later") == []  # not awaited: the call back queues
        assert await a.notified() == ["b", "a"]
        # asyncio.wait for the first of the call back and a sleep: the sleep ends the wait,
        # so the call back only queues.
        assert await a.race("b") == [False, True]
        assert await a.notified() == ["b", "a"]
        # The same calls with the call back never awaited: it only queues.
        assert await a.fan(["c", "d"], "b", "others") == [["c"], ["d"]]
        assert await a.notified() == ["b", "a"]
        # Two calls from one turn at once meet at one instance: no deadlock, they queue.
        assert await asyncio.gather(a.ping(["b", "d"]), ring.id_from_name("c").ping(["d"])) == [
            ["a", "b", "d"],
            ["c", "d"],
        ]

    run(actor_runtime, go, Ring, Starter, Opener)


class _Touchy:
    """A class attribute that raises whatever one asks of it."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"do not look at {name}")


class WithTouchy(StatefulActor):
    touchy = _Touchy()

    async def hello(self) -> str:
        return "hello"


def test_odd_class_attributes_do_not_stop_registration(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        assert await rt.namespace("WithTouchy").id_from_name("x").hello() == "hello"

    run(actor_runtime, go, WithTouchy)


@pytest.mark.parametrize(
    ("option", "value", "error", "says"),
    [
        ("method_timeout", -1, ValueError, "method_timeout must be a finite number > 0, not -1"),
        ("idle_timeout", 0, ValueError, "idle_timeout must be a finite number > 0, not 0"),
        ("fetch_timeout", float("inf"), ValueError, "fetch_timeout must be a finite number"),
        ("alarm_timeout", "30", TypeError, "alarm_timeout must be a number of seconds, not str"),
        ("block_timeout", True, TypeError, "block_timeout must be a number of seconds"),
        ("checkpoint_bytes", 0, ValueError, "checkpoint_bytes must be between 1 and"),
        ("group_window_us", 2_000_000, ValueError, "group_window_us must be between 0 and"),
        ("group_window_records", 0, ValueError, "group_window_records must be between 1 and"),
        ("group_delay_us", 2.5, TypeError, "group_delay_us must be an int, not float"),
        ("max_resident", -1, ValueError, "max_resident must be between 0 and"),
    ],
)
def test_runtime_options_out_of_range_are_refused_by_name(
    actor_runtime: RuntimeFactory, option: str, value: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        actor_runtime(Account, **{option: value})
    # Nothing was opened: the same directory serves a runtime with valid options.
    assert run(actor_runtime, lambda rt: acct(rt).deposit(1)) == 1
