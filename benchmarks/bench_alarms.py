"""Alarms: the timing wheel's insert and cancel rates, a million pending alarms (memory,
restart), and firing lateness under load.

    python benchmarks/bench_alarms.py            # the table for BENCHMARKS.md
    python -m pytest benchmarks/bench_alarms.py --benchmark-enable

Questions answered, each with its reference from the same run:
- TimerWheel.add / cancel / advance from Python, against heapq.heappush / heappop of the
  same (time, key) items (what a pure-Python scheduler would use);
- 1,000,000 pending alarms in the snapshot: bytes of wheel memory per alarm, Python memory
  per alarm, and the time to open the runtime (rebuild the wheel) against the same snapshot
  without alarms;
- 100,000 alarms due over a 10 s window while 256 callers drive durable debits on other
  instances: lateness p50 / p99 / max (time of the handler's start minus the alarm's time),
  and the debit rate meanwhile against the debit rate with no alarms.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import uvloop

from fastactor import AlarmInfo, Runtime, StatefulActor, TimerWheel
from fastactor._core import encode_value, snapshot_row_value

BENCH_DIR = Path(os.environ.get("FASTACTOR_BENCH_DIR", ".bench-data")).resolve()
LATE: list[float] = []


class Reminder(StatefulActor):
    async def arm(self, when: float) -> None:
        await self.ctx.storage.set_alarm(when)

    async def alarm(self, info: AlarmInfo) -> None:
        due = await self.ctx.storage.get_alarm()
        LATE.append(time.time() * 1000 - due)
        await self.ctx.storage.put("fired", True)

    async def debit(self, amount: int) -> dict[str, Any]:
        balance = await self.ctx.storage.get("balance") or 1 << 40
        await self.ctx.storage.put("balance", balance - amount)
        return {"ok": True, "balance": balance - amount}


def fresh(name: str) -> Path:
    d = BENCH_DIR / name
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    return d


def wheel_rates(n: int) -> dict[str, float]:
    """Operations per second: wheel add, cancel, advance (firing) and heapq push, pop."""
    now = int(time.time() * 1000)
    rnd = random.Random(1)
    whens = [now + rnd.randrange(1, 3_600_000) for _ in range(n)]
    keys = [f"Reminder\0r{i}" for i in range(n)]
    out: dict[str, float] = {}
    w = TimerWheel(now)
    add = w.add
    t = time.perf_counter()
    handles = [add(when, key) for when, key in zip(whens, keys, strict=True)]
    out["add"] = n / (time.perf_counter() - t)
    cancel = w.cancel
    t = time.perf_counter()
    for h in handles[: n // 2]:
        cancel(h)
    out["cancel"] = (n // 2) / (time.perf_counter() - t)
    t = time.perf_counter()
    fired = len(w.advance(now + 3_600_000))
    out["advance"] = fired / (time.perf_counter() - t)
    heap: list[tuple[int, str]] = []
    push = heapq.heappush
    t = time.perf_counter()
    for when, key in zip(whens, keys, strict=True):
        push(heap, (when, key))
    out["heappush"] = n / (time.perf_counter() - t)
    pop = heapq.heappop
    t = time.perf_counter()
    while heap:
        pop(heap)
    out["heappop"] = n / (time.perf_counter() - t)
    return out


def _fill_snapshot(d: Path, n: int, alarms: bool) -> None:
    async def init() -> None:
        async with Runtime(d, [Reminder]) as rt:
            await rt.namespace("Reminder").id_from_name("seed").debit(1)

    uvloop.run(init())
    far = encode_value(int(time.time() * 1000) + 86_400_000)
    db = sqlite3.connect(d / "state.sqlite3")

    def rows(key: str, encoded: bytes) -> Any:  # snapshot rows, sealed as the runtime seals
        for i in range(n):
            yield (f"Reminder\0r-{i}", key, snapshot_row_value(f"Reminder\0r-{i}", key, encoded))

    with db:
        db.executemany("INSERT INTO kv VALUES (?, ?, ?)", rows("balance", b"\x05"))
        if alarms:
            db.executemany("INSERT INTO kv VALUES (?, ?, ?)", rows("__fastactor_alarm", far))
    db.close()


def million_pending(n: int = 1_000_000) -> dict[str, float]:
    """Open time with N pending alarms and without; wheel and Python bytes per alarm."""
    out: dict[str, float] = {}
    for alarms in (False, True):
        d = fresh("alarms-million")
        _fill_snapshot(d, n, alarms)

        async def start(d: Path = d, alarms: bool = alarms, traced: bool = False) -> None:
            gc.collect()
            if traced:  # a second open, for memory: tracemalloc slows allocation down
                tracemalloc.start()
            t = time.perf_counter()
            rt = Runtime(d, [Reminder])
            await rt.start()
            opened = time.perf_counter() - t
            st = rt.stats()
            if traced:
                out["python_bytes"] = tracemalloc.get_traced_memory()[0] / n
                tracemalloc.stop()
            await rt.close()
            if not alarms:
                out["open_s_no_alarms"] = opened
            elif not traced:
                assert st["alarms_pending"] == n
                out["open_s"] = opened
                out["wheel_bytes"] = st["alarm_wheel_bytes"] / n

        uvloop.run(start())
        if alarms:
            uvloop.run(start(d, alarms, traced=True))
    return out


def lateness(n: int, window_s: float, callers: int = 256) -> dict[str, float]:
    """N alarms due evenly over WINDOW_S seconds, while CALLERS drive debits."""
    d = fresh("alarms-late")
    LATE.clear()

    async def go() -> dict[str, float]:
        async with Runtime(d, [Reminder]) as rt:
            ns = rt.namespace("Reminder")
            accounts = [ns.id_from_name(f"acct-{i}") for i in range(1000)]
            debits = 0
            stop = False

            async def caller(k: int) -> None:
                nonlocal debits
                rnd = random.Random(k)
                while not stop:
                    await accounts[rnd.randrange(len(accounts))].debit(1)
                    debits += 1

            async def measure(seconds: float) -> float:
                start = debits
                await asyncio.sleep(seconds)
                return (debits - start) / seconds

            tasks = [asyncio.ensure_future(caller(k)) for k in range(callers)]
            alone = await measure(2.0)
            first = time.time() * 1000 + 3000
            step = window_s * 1000 / n
            stubs = [ns.id_from_name(f"r-{i}") for i in range(n)]
            for i in range(0, n, 1000):
                await asyncio.gather(
                    *(stubs[j].arm(first + j * step) for j in range(i, min(n, i + 1000)))
                )
            await asyncio.sleep(max(0.0, (first - time.time() * 1000) / 1000))
            during = await measure(window_s)
            while len(LATE) < n:
                await asyncio.sleep(0.05)
            stop = True
            await asyncio.gather(*tasks)
            late = sorted(LATE)
            return {
                "p50": late[len(late) // 2],
                "p99": late[int(len(late) * 0.99)],
                "max": late[-1],
                "debits_alone": alone,
                "debits_during": during,
            }

    return uvloop.run(go())


def table(rounds: int = 3) -> str:
    med = statistics.median
    rates = [wheel_rates(1_000_000) for _ in range(rounds)]
    r = {k: med(x[k] for x in rates) for k in rates[0]}
    m = million_pending()
    lat = lateness(100_000, 10.0)
    lines = [
        f"host: nproc={os.cpu_count()}  dir={BENCH_DIR}  rounds={rounds} (medians)",
        "",
        "| operation (1,000,000 timers, from Python) | ops/s | vs heapq |",
        "|---|---:|---:|",
        f"| TimerWheel.add | {r['add']:,.0f} | {r['add'] / r['heappush']:.2f} x heappush |",
        f"| TimerWheel.cancel | {r['cancel']:,.0f} | (heapq has no O(log n) cancel) |",
        f"| TimerWheel.advance (fire) | {r['advance']:,.0f} | "
        f"{r['advance'] / r['heappop']:.2f} x heappop |",
        "",
        f"1,000,000 pending alarms: {m['wheel_bytes']:.1f} B of wheel memory per alarm, "
        f"{m['python_bytes']:.0f} B of Python memory per alarm (whole runtime, tracemalloc);"
        f" open {m['open_s']:.2f} s vs {m['open_s_no_alarms']:.2f} s without alarms",
        f"lateness, 100,000 alarms over 10 s with 256 callers debiting: p50 "
        f"{lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms; debits "
        f"{lat['debits_during']:,.0f}/s during vs {lat['debits_alone']:,.0f}/s alone "
        f"({lat['debits_during'] / lat['debits_alone']:.2f})",
    ]
    return "\n".join(lines)


# -- pytest-benchmark (small sizes: the suite runs these once as a smoke test) -----------------


def _bench(benchmark: Any, fn: Any) -> None:
    out: list[Any] = []
    benchmark.pedantic(lambda: out.append(fn()), rounds=1, iterations=1)
    benchmark.extra_info["result"] = out[-1]


def test_wheel_rates(benchmark: Any) -> None:
    _bench(benchmark, lambda: wheel_rates(20_000))


def test_million_pending_small(benchmark: Any) -> None:
    _bench(benchmark, lambda: million_pending(5_000))


def test_lateness_small(benchmark: Any) -> None:
    _bench(benchmark, lambda: lateness(2_000, 1.0, callers=16))


if __name__ == "__main__":
    print(table(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
