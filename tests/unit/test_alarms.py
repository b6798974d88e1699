"""Alarms (SPEC §3 alarm calls, §4): durable, one per instance, fired as turns, retried."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from fastactor import AlarmInfo, AlarmRetry, Runtime, StatefulActor
from fastactor.testing import RuntimeFactory, crash

RUNS: list[tuple[str, int, bool, int]] = []  # (name, retry_count, is_retry, at ms)


def now_ms() -> int:
    return int(time.time() * 1000)


class Timer(StatefulActor):
    alarm_retry = AlarmRetry(limit=3, delay=0.05)

    async def alarm(self, info: AlarmInfo) -> None:
        RUNS.append((self.ctx.id, info.retry_count, info.is_retry, now_ms()))
        mode = await self.ctx.storage.get("mode")
        if mode == "fail":
            raise RuntimeError("boom")
        if mode == "hang":
            await asyncio.sleep(60)
        await self.ctx.storage.put("fired", (await self.ctx.storage.get("fired") or 0) + 1)
        if mode == "periodic":
            left = await self.ctx.storage.get("left")
            if left:
                await self.ctx.storage.put("left", left - 1)
                await self.ctx.storage.set_alarm(now_ms() + 20)

    async def arm(self, when: Any, mode: str | None = None) -> None:
        await self.ctx.storage.put("mode", mode)
        await self.ctx.storage.set_alarm(when)

    async def arm_periodic(self, n: int) -> None:
        await self.ctx.storage.put("left", n)
        await self.arm(now_ms(), "periodic")

    async def arm_sync(self, when: Any) -> None:
        self.ctx.set_alarm(when)  # the ctx alias works without await

    async def get(self) -> int | None:
        return await self.ctx.storage.get_alarm()

    async def delete(self) -> None:
        await self.ctx.storage.delete_alarm()

    async def fired(self) -> int:
        return await self.ctx.storage.get("fired") or 0

    async def wipe(self) -> dict[str, Any]:
        await self.ctx.storage.put("x", 1)
        await self.ctx.storage.delete_all()
        return await self.ctx.storage.list()

    async def listing(self) -> dict[str, Any]:
        return await self.ctx.storage.list()

    async def arm_in_failed_txn(self, when: int) -> None:
        try:
            async with self.ctx.storage.transaction() as txn:
                await txn.set_alarm(when)
                raise ValueError("no")
        except ValueError:
            pass

    async def hold(self, t: float) -> None:
        RUNS.append((self.ctx.id, -1, False, now_ms()))
        await asyncio.sleep(t)
        RUNS.append((self.ctx.id, -2, False, now_ms()))


def run(factory: RuntimeFactory, fn: Callable[[Runtime], Awaitable[Any]], **opts: Any) -> Any:
    RUNS.clear()

    async def go() -> Any:
        async with factory(Timer, **opts) as rt:
            return await fn(rt)

    return uvloop.run(go())


def timer(rt: Runtime, name: str = "t") -> Any:
    return rt.namespace("Timer").id_from_name(name)


async def until(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_fires_once_at_its_time_then_is_cleared(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        when = now_ms() + 150
        await t.arm(when)
        assert await t.get() == when
        await until(lambda: RUNS)
        name, retry, is_retry, at = RUNS[0]
        assert (name, retry, is_retry) == ("t", 0, False)
        assert when <= at < when + 1000
        assert await t.get() is None
        assert await t.fired() == 1
        await asyncio.sleep(0.1)
        assert len(RUNS) == 1

    run(actor_runtime, go)


def test_setting_replaces_and_delete_cancels(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        a, b = timer(rt, "a"), timer(rt, "b")
        await a.arm(now_ms() + 60)
        later = now_ms() + 200
        await a.arm(later)
        await b.arm(now_ms() + 60)
        await b.delete()
        assert await b.get() is None
        await until(lambda: RUNS)
        await asyncio.sleep(0.1)
        assert [r[0] for r in RUNS] == ["a"] and RUNS[0][3] >= later
        assert await b.fired() == 0

    run(actor_runtime, go)


def test_when_forms_and_past_times(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        dt = datetime.datetime(2030, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        await t.arm(dt)
        assert await t.get() == int(dt.timestamp() * 1000)
        await t.arm(1893456000000.2)  # floats round up to the next ms
        assert await t.get() == 1893456000001
        await t.arm(now_ms() - 10_000)  # past: fires at once
        await until(lambda: RUNS, 1.0)
        await t.arm_sync(now_ms() - 1)
        await until(lambda: len(RUNS) == 2, 1.0)

    run(actor_runtime, go)


@pytest.mark.parametrize(
    ("when", "error", "match"),
    [
        ("soon", TypeError, "aware datetime"),
        (None, TypeError, "NoneType"),
        (True, TypeError, "bool"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        (10**20, ValueError, "9999"),
        (datetime.datetime(2030, 1, 1), ValueError, "time zone"),
    ],
)
def test_bad_times_are_refused_and_change_nothing(
    actor_runtime: RuntimeFactory, when: Any, error: type[Exception], match: str
) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        keep = now_ms() + 3_600_000
        await t.arm(keep)
        with pytest.raises(Exception) as ei:
            await t.arm(when)
        assert ei.value.remote_type == error.__name__  # type: ignore[attr-defined]
        assert match in str(ei.value)
        assert await t.get() == keep
        with pytest.raises(Exception, match=match):
            await t.arm_sync(when)
        assert await t.get() == keep

    run(actor_runtime, go)


def test_delete_all_keeps_the_alarm_and_list_hides_it(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        when = now_ms() + 3_600_000
        await t.arm(when)
        assert await t.listing() == {"mode": None}
        assert await t.wipe() == {}
        assert await t.get() == when
        await rt.checkpoint()  # through the snapshot too
        rt.evict_idle()
        assert await t.get() == when
        assert await t.listing() == {}

    run(actor_runtime, go)


def test_alarm_in_a_failed_transaction_is_discarded(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        with pytest.raises(Exception, match="transaction"):
            await t.arm_in_failed_txn(now_ms() + 50)
        assert await t.get() is None
        await asyncio.sleep(0.15)
        assert RUNS == []

    run(actor_runtime, go)


def test_retries_then_gives_up(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        await t.arm(now_ms(), "fail")
        await until(lambda: len(RUNS) == 4)
        await asyncio.sleep(0.2)
        assert [(r[1], r[2]) for r in RUNS] == [(0, False), (1, True), (2, True), (3, True)]
        gaps = [b[3] - a[3] for a, b in zip(RUNS, RUNS[1:], strict=False)]
        assert all(g >= 49 for g in gaps), gaps
        assert await t.get() is None  # given up: deleted
        assert await t.fired() == 0  # the failed runs' writes were discarded
        assert rt.stats()["alarms_given_up"] == 1

    run(actor_runtime, go)


def test_exponential_retry_policy(actor_runtime: RuntimeFactory) -> None:
    class Backoff(Timer):
        alarm_retry = AlarmRetry(limit=2, delay=0.04, backoff=3.0)

    async def go() -> None:
        RUNS.clear()
        async with actor_runtime(Backoff) as rt:
            b = rt.namespace("Backoff").id_from_name("b")
            await b.arm(now_ms(), "fail")
            await until(lambda: len(RUNS) == 3)
            gaps = [y[3] - x[3] for x, y in zip(RUNS, RUNS[1:], strict=False)]
            assert 39 <= gaps[0] < gaps[1] and gaps[1] >= 119, gaps

    uvloop.run(go())
    with pytest.raises(ValueError, match="backoff"):
        AlarmRetry(backoff=0.5)
    with pytest.raises(ValueError, match="limit"):
        AlarmRetry(limit=-1)


def test_timed_out_alarm_is_retried(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        await t.arm(now_ms(), "hang")
        await until(lambda: len(RUNS) == 2)
        assert RUNS[1][1:3] == (1, True)
        await t.arm(now_ms() + 3_600_000, None)  # a new alarm ends the retries
        await asyncio.sleep(0.3)
        assert len(RUNS) == 2

    run(actor_runtime, go, alarm_timeout=0.1)


def test_alarm_waits_for_the_running_call(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        await t.arm(now_ms() + 30)
        await t.hold(0.2)
        await until(lambda: len(RUNS) == 3)
        assert [r[1] for r in RUNS] == [-1, -2, 0]

    run(actor_runtime, go)


def test_held_alarms_stay_stored_and_busy_sees_running_turns(
    actor_runtime: RuntimeFactory,
) -> None:
    """serve's shutdown: once alarms are held none starts, neither one due nor one set
    afterwards, and each stays stored for the next start; busy() is true while a turn runs
    or a call waits for one, and false once all have ended."""

    async def go(rt: Runtime) -> None:
        a, b = timer(rt, "a"), timer(rt, "b")
        when = now_ms() + 50
        await a.arm(when)
        assert not rt.shard.busy()
        rt.shard.hold_alarms()
        held = asyncio.ensure_future(b.hold(0.2))
        queued = asyncio.ensure_future(b.get())
        await until(lambda: RUNS)
        assert rt.shard.busy()
        await b.arm(now_ms() + 20)
        await asyncio.gather(held, queued)
        assert not rt.shard.busy()
        await asyncio.sleep(0.2)
        assert [r[1] for r in RUNS] == [-1, -2]  # hold's two marks, no alarm run
        assert await a.get() == when and await a.fired() == 0
        assert await b.get() is not None

    run(actor_runtime, go)


class Sleeper(StatefulActor):
    """Its alarm (and its call) writes, then sleeps while SLEEPING holds: a turn still
    running when serve's shutdown deadline comes."""

    async def alarm(self, info: AlarmInfo) -> None:
        RUNS.append((self.ctx.id, info.retry_count, info.is_retry, now_ms()))
        await self.ctx.storage.put("began", (await self.ctx.storage.get("began") or 0) + 1)
        while SLEEPING:
            await asyncio.sleep(0.01)

    async def arm(self) -> None:
        await self.ctx.storage.set_alarm(now_ms())

    async def write_and_sleep(self) -> None:
        await self.ctx.storage.put("x", 1)
        while SLEEPING:
            await asyncio.sleep(0.01)

    async def read(self) -> tuple[Any, Any, Any]:
        s = self.ctx.storage
        return await s.get("began"), await s.get("x"), await s.get_alarm()


SLEEPING: list[bool] = []


def test_stopped_turns_drop_their_writes_and_alarms_stay_stored(
    actor_runtime: RuntimeFactory,
) -> None:
    """serve's shutdown deadline: stop_turns ends the running turns at once (a call's caller
    gets a RuntimeError and its writes are dropped; an alarm run's writes are dropped and
    the alarm stays stored, not counted as failed), fails the calls queued behind them, and
    refuses calls from then on. The next start runs the alarm."""
    RUNS.clear()
    SLEEPING[:] = [True]

    async def first() -> None:
        async with actor_runtime(Sleeper) as rt:
            ns = rt.namespace("Sleeper")
            a, b = ns.id_from_name("a"), ns.id_from_name("b")
            await a.arm()
            await until(lambda: RUNS)
            running = asyncio.ensure_future(b.write_and_sleep())
            queued = asyncio.ensure_future(b.read())
            await asyncio.sleep(0.05)
            assert rt.shard.busy()
            rt.shard.hold_alarms()
            assert rt.shard.stop_turns() == 2
            with pytest.raises(RuntimeError, match="shut down before this call ended"):
                await running
            with pytest.raises(RuntimeError, match="shut down before this call started"):
                await queued
            with pytest.raises(RuntimeError, match="shutting down"):
                await b.read()
            await until(lambda: not rt.shard.busy())
            assert len(RUNS) == 1  # no retry

    async def second() -> None:
        async with actor_runtime(Sleeper) as rt:
            ns = rt.namespace("Sleeper")
            await until(lambda: RUNS)
            assert RUNS[0][1:3] == (0, False)
            began, x, alarm = await ns.id_from_name("a").read()
            assert (began, alarm) == (1, None)
            assert await ns.id_from_name("b").read() == (None, None, None)

    uvloop.run(first())
    RUNS.clear()
    SLEEPING.clear()
    uvloop.run(second())


class Deaf(StatefulActor):
    """Its first alarm run catches the cancellation its budget sends and waits on, until a
    retry has begun; the retry stores its count."""

    async def arm(self) -> None:
        await self.ctx.storage.set_alarm(now_ms())

    async def alarm(self, info: AlarmInfo) -> None:
        RUNS.append((self.ctx.id, info.retry_count, info.is_retry, now_ms()))
        while info.retry_count == 0 and len(RUNS) == 1:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass
        await self.ctx.storage.put("done", info.retry_count)

    async def read(self) -> tuple[Any, Any]:
        return await self.ctx.storage.get("done"), await self.ctx.storage.get_alarm()


def test_an_alarm_run_that_catches_its_cancellation_does_not_hold_its_retry(
    actor_runtime: RuntimeFactory,
) -> None:
    # The run past its budget is failed (retry in 1 s) and left behind stuck_grace later;
    # the retry then runs on a new activation and the alarm is cleared. Before, the retry
    # waited behind the first run for ever.
    RUNS.clear()

    async def go() -> None:
        async with actor_runtime(Deaf, alarm_timeout=0.2) as rt:
            rt.shard.stuck_grace = 0.3
            d = rt.namespace("Deaf").id_from_name("d")
            await d.arm()
            await until(lambda: len(RUNS) == 2)
            assert [r[1] for r in RUNS] == [0, 1]
            await until(lambda: rt.stats()["alarms_run"] == 1)
            assert await d.read() == (1, None)
            assert rt.stats()["turns_left_behind"] == 1

    uvloop.run(go())


def test_alarm_reactivates_an_evicted_instance(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        t = timer(rt)
        await t.arm(now_ms() + 100)
        assert rt.evict_idle() == 1
        assert not rt.shard.is_resident("Timer", "t")
        await until(lambda: RUNS)
        assert rt.shard.is_resident("Timer", "t")
        assert await t.fired() == 1

    run(actor_runtime, go)


def test_periodic_alarm(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        p = timer(rt, "p")
        await p.arm_periodic(4)
        # The handler sets the next alarm four times: five runs in all, then none.
        await until(lambda: len(RUNS) == 5)
        await asyncio.sleep(0.1)
        assert len(RUNS) == 5
        assert await p.fired() == 5 and await p.get() is None

    run(actor_runtime, go)


def test_many_instances_fire_in_time_order(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        base = now_ms() + 200
        whens = {f"i{k}": base + (k * 37) % 300 for k in range(200)}
        await asyncio.gather(*(timer(rt, n).arm(w) for n, w in whens.items()))
        await until(lambda: len(RUNS) == 200)
        order = [r[0] for r in RUNS]
        assert [whens[n] for n in order] == sorted(whens.values())
        late = [r[3] - whens[r[0]] for r in RUNS]
        assert min(late) >= 0
        assert rt.stats()["alarms_pending"] == 0

    run(actor_runtime, go)


def test_survives_a_crash_and_fires_after_restart(actor_runtime: RuntimeFactory) -> None:
    async def before() -> tuple[int, int]:
        rt = actor_runtime(Timer)
        await rt.start()
        due_in_downtime = now_ms() + 100
        later = now_ms() + 700
        await timer(rt, "down").arm(due_in_downtime)
        await timer(rt, "later").arm(later)
        await timer(rt, "gone").arm(now_ms() + 100)
        await timer(rt, "gone").delete()
        crash(rt)  # nothing checkpointed: the log has it all
        return due_in_downtime, later

    async def after(later: int) -> None:
        await asyncio.sleep(0.3)  # the first one came due while down
        async with actor_runtime(Timer) as rt:
            assert rt.stats()["alarms_pending"] == 2
            assert not rt.shard.is_resident("Timer", "down")  # rebuilt, not activated
            await until(lambda: RUNS)
            assert RUNS[0][0] == "down"
            await until(lambda: len(RUNS) == 2)
            assert RUNS[1][0] == "later" and RUNS[1][3] >= later
            assert await timer(rt, "gone").fired() == 0

    RUNS.clear()
    _, later = uvloop.run(before())
    assert RUNS == []
    uvloop.run(after(later))


def test_alarms_survive_a_checkpoint_and_restart(actor_runtime: RuntimeFactory) -> None:
    async def before() -> int:
        async with actor_runtime(Timer) as rt:  # close() checkpoints into the snapshot
            when = now_ms() + 250
            await timer(rt).arm(when)
            await timer(rt, "other").arm(now_ms() + 3_600_000)
            await timer(rt, "other").wipe()
            return when

    async def after(when: int) -> None:
        async with actor_runtime(Timer) as rt:
            assert await timer(rt, "other").get() is not None
            await until(lambda: RUNS)
            assert RUNS[0][0] == "t" and RUNS[0][3] >= when

    RUNS.clear()
    uvloop.run(after(uvloop.run(before())))
