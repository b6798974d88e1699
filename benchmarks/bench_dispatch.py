"""Durable actor turns per second in one process, against a dict and the raw log.

    python benchmarks/bench_dispatch.py            # the table for BENCHMARKS.md
    python -m pytest benchmarks/bench_dispatch.py --benchmark-enable

Questions answered, each with its reference from the same run:
- debit turns/s spread over 10,000 instances and on one hot instance, 4096 callers, every
  reply durable; against the same callers running the same logic on a plain dict (no
  durability, no actors) and against the log alone (durable appends of a debit-sized record
  with 4096 waiters);
- resident memory per idle instance holding one small key, and after eviction;
- restart with 1,000,000 instances x 3 keys in the snapshot: time to the first served call;
  and the replay rate of a log tail.
"""

from __future__ import annotations

import asyncio
import gc
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

from fastactor import Runtime, StatefulActor, WriteAheadLog
from fastactor._core import snapshot_row_value
from fastactor.testing import crash

BENCH_DIR = Path(os.environ.get("FASTACTOR_BENCH_DIR", ".bench-data")).resolve()
CALLERS = 4096


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


def fresh(name: str) -> Path:
    d = BENCH_DIR / name
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    return d


async def _drive(call: Any, names: list[str], turns: int) -> float:
    per = max(1, turns // CALLERS)

    async def caller(k: int) -> None:
        rnd = random.Random(k)
        for _ in range(per):
            await call(names[rnd.randrange(len(names))])

    t = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(CALLERS)))
    return per * CALLERS / (time.perf_counter() - t)


def debit_turns(instances: int, turns: int) -> tuple[float, float]:
    """(turns/s, turns per fdatasync) for durable debits spread over INSTANCES."""
    d = fresh(f"dispatch-{instances}")

    async def go() -> tuple[float, float]:
        async with Runtime(d, [Account]) as rt:
            ns = rt.namespace("Account")
            names = [f"acct-{i}" for i in range(instances)]
            stubs = {n: ns.id_from_name(n) for n in names}
            await asyncio.gather(*(s.deposit(10**12) for s in stubs.values()))
            b0, c0 = rt.shard.wal.batches, rt.stats()["commits"]
            rate = await _drive(lambda n: stubs[n].debit(1), names, turns)
            st = rt.stats()
            per_sync = (st["commits"] - c0) / max(1, rt.shard.wal.batches - b0)
            return rate, per_sync

    return uvloop.run(go())


def dict_reference(instances: int, turns: int) -> float:
    """The same callers and debit logic on a dict: no actors, no codec, no durability."""
    state = {f"acct-{i}": 10**12 for i in range(instances)}

    async def debit(name: str) -> dict[str, Any]:
        balance = state.get(name) or 0
        if balance < 1:
            return {"ok": False, "balance": balance}
        state[name] = balance - 1
        return {"ok": True, "balance": balance - 1}

    return uvloop.run(_drive(debit, list(state), turns))


def log_reference(turns: int) -> float:
    """Durable appends of a debit-sized record (about 40 bytes) with 4096 waiters."""
    d = fresh("dispatch-log")
    rec = b"x" * 40

    async def go() -> float:
        w = WriteAheadLog(d)
        per = max(1, turns // CALLERS)

        async def waiter() -> None:
            for _ in range(per):
                await w.wait_durable(w.append(rec))

        t = time.perf_counter()
        await asyncio.gather(*(waiter() for _ in range(CALLERS)))
        rate = per * CALLERS / (time.perf_counter() - t)
        w.close()
        return rate

    return uvloop.run(go())


def memory_per_instance(instances: int) -> tuple[float, float]:
    """Bytes of Python memory per resident idle instance with one small key, and per
    instance once they are all evicted (tracemalloc)."""
    d = fresh("dispatch-mem")

    async def go() -> tuple[float, float]:
        async with Runtime(d, [Account], idle_timeout=3600) as rt:
            ns = rt.namespace("Account")
            await ns.id_from_name("warm").deposit(1)
            await rt.checkpoint()
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(0, instances, 1000):
                await asyncio.gather(
                    *(
                        ns.id_from_name(f"m{j}").deposit(5)
                        for j in range(i, min(i + 1000, instances))
                    )
                )
            await rt.checkpoint()  # the overlay goes to the snapshot
            gc.collect()
            resident = tracemalloc.get_traced_memory()[0] - base
            await asyncio.sleep(0.01)  # the last replies are released
            rt.evict_idle()
            gc.collect()
            evicted = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            return resident / instances, evicted / instances

    return uvloop.run(go())


def restart_with_million(instances: int = 1_000_000) -> tuple[float, float]:
    """Fills the snapshot with INSTANCES x 3 keys, then returns (seconds to open the runtime
    and serve one call on a random instance, seconds to open alone)."""
    d = fresh("dispatch-restart")

    async def init() -> None:
        async with Runtime(d, [Account]) as rt:
            await rt.namespace("Account").id_from_name("seed").deposit(1)

    uvloop.run(init())
    db = sqlite3.connect(d / "state.sqlite3")
    enc = b"\x05"  # the codec's encoding of the int 5
    rows = (
        (f"Account\0acct-{i}", k, snapshot_row_value(f"Account\0acct-{i}", k, enc))
        for i in range(instances)
        for k in ("balance", "limit", "owner")
    )
    with db:
        db.executemany("INSERT INTO kv VALUES (?, ?, ?)", rows)
    db.close()

    async def first_call() -> tuple[float, float]:
        t = time.perf_counter()
        rt = Runtime(d, [Account])
        await rt.start()
        opened = time.perf_counter() - t
        r = (
            await rt.namespace("Account")
            .id_from_name(f"acct-{random.randrange(instances)}")
            .debit(1)
        )
        total = time.perf_counter() - t
        assert r == {"ok": True, "balance": 4}
        await rt.close()
        return total, opened

    return uvloop.run(first_call())


class Blob(StatefulActor):
    async def store(self, data: bytes) -> None:
        await self.ctx.storage.put("data", data)


def replay_rate(turns: int, value_bytes: int = 0) -> tuple[float, float]:
    """(MB/s, records/s) replaying a log tail of TURNS turns after a crash: debits, or, with
    VALUE_BYTES, turns that each store a value of that size."""
    d = fresh("dispatch-replay")
    blob = os.urandom(value_bytes)

    async def write() -> None:
        rt = Runtime(d, [Account, Blob], checkpoint_interval=3600, checkpoint_bytes=1 << 40)
        await rt.start()
        names = [f"acct-{i}" for i in range(10_000)]
        if value_bytes:
            ns = rt.namespace("Blob")
            stubs = {n: ns.id_from_name(n) for n in names}
            await _drive(lambda n: stubs[n].store(blob), names, turns)
        else:
            ns = rt.namespace("Account")
            stubs = {n: ns.id_from_name(n) for n in names}
            await _drive(lambda n: stubs[n].deposit(1), names, turns)
        crash(rt)

    uvloop.run(write())

    async def reopen() -> tuple[float, float]:
        t = time.perf_counter()
        rt = Runtime(d, [Account, Blob])
        await rt.start()
        dt = time.perf_counter() - t
        st = rt.stats()
        await rt.close()
        return st["replayed_bytes"] / dt / 1e6, st["replayed_records"] / dt

    return uvloop.run(reopen())


def table(rounds: int = 3) -> str:
    med = statistics.median
    spread: list[float] = []
    hot: list[float] = []
    per_sync: list[float] = []
    dref: list[float] = []
    lref: list[float] = []
    for _ in range(rounds):
        lref.append(log_reference(400_000))
        dref.append(dict_reference(10_000, 400_000))
        r, b = debit_turns(10_000, 400_000)
        spread.append(r)
        per_sync.append(b)
        hot.append(debit_turns(1, 400_000)[0])
    mem_res, mem_ev = memory_per_instance(50_000)
    first, opened = restart_with_million()
    mbps, recps = replay_rate(400_000)
    kb_mbps, kb_recps = replay_rate(100_000, 1024)
    lines = [
        f"host: nproc={os.cpu_count()}  dir={BENCH_DIR}  rounds={rounds} (medians), "
        f"{CALLERS} concurrent callers",
        "",
        "| workload | turns/s | vs dict (no durability) | vs log alone (durable appends) |",
        "|---|---:|---:|---:|",
        f"| debit, spread over 10,000 instances | {med(spread):,.0f} | "
        f"{med(spread) / med(dref):.2f} | {med(spread) / med(lref):.2f} |",
        f"| debit, one hot instance | {med(hot):,.0f} | {med(hot) / med(dref):.2f} | "
        f"{med(hot) / med(lref):.2f} |",
        "",
        f"references: dict {med(dref):,.0f} debits/s, log {med(lref):,.0f} durable appends/s;"
        f" spread debits share each fdatasync {med(per_sync):,.0f} at a time",
        f"memory: {mem_res:,.0f} B per resident idle instance (one small key), "
        f"{mem_ev:,.0f} B per instance after eviction (tracemalloc)",
        f"restart with 1,000,000 instances x 3 keys: first call served after {first:.3f} s "
        f"(open {opened:.3f} s)",
        f"log tail replay: {mbps:,.0f} MB/s ({recps:,.0f} records/s) with debit records; "
        f"{kb_mbps:,.0f} MB/s ({kb_recps:,.0f} records/s) with 1 KiB values",
    ]
    return "\n".join(lines)


# -- pytest-benchmark (small sizes: the suite runs these once as a smoke test) -----------------


def _bench(benchmark: Any, fn: Any) -> None:
    out: list[Any] = []
    benchmark.pedantic(lambda: out.append(fn()), rounds=1, iterations=1)
    benchmark.extra_info["result"] = out[-1]


def test_debit_spread(benchmark: Any) -> None:
    _bench(benchmark, lambda: debit_turns(1000, 20_000))


def test_debit_hot(benchmark: Any) -> None:
    _bench(benchmark, lambda: debit_turns(1, 20_000))


def test_dict_reference(benchmark: Any) -> None:
    _bench(benchmark, lambda: dict_reference(1000, 20_000))


def test_memory_per_instance(benchmark: Any) -> None:
    _bench(benchmark, lambda: memory_per_instance(2000))


def test_restart_and_replay(benchmark: Any) -> None:
    _bench(benchmark, lambda: (restart_with_million(20_000), replay_rate(20_000)))


if __name__ == "__main__":
    print(table(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
