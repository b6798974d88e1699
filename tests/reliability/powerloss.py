"""Power-loss simulation: random workloads over many instances, cut at random points with the
log's unsynced bytes dropped, kept, torn or garbled, then recovered and checked against a
model.

    python tests/reliability/powerloss.py --crashes 10000 [--seed N]

One crash: a runtime runs a random batch of turns (puts, deletes, transactions, failed
transactions, debits, alarm sets and deletes, delete_all) on 12 instances while a fault armed
at a random fdatasync ("halt") stops the log: that batch's write reached the file but was never
made durable, as in a power cut between write() and fdatasync(). The runtime is dropped like
kill -9, and then the "disk" loses power: every 512-byte sector written after the last
completed fdatasync is independently kept, lost (the file cut there), zeroed or garbled.
Recovery must then give, for every instance, the state after its turns in order, each
acknowledged turn applied and each unacknowledged one either applied whole or not at all; a
balance is never negative. (An unacknowledged turn may also have no effect while a later one of
the same instance is acknowledged: a turn whose write could not be logged fails, and the next
one runs on the state without it.) The next crash goes on over the
same directory (checkpoints included), from what recovered.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from fastactor import ActorMethodError, ActorOutputGateError, Runtime, StatefulActor
from fastactor.testing import crash

NAMES = [f"i{k}" for k in range(12)]
FAR = 4102444800000  # 2100-01-01: alarms set here never fire during a run
SECTOR = 512


class Sim(StatefulActor):
    async def put(self, key: str, value: Any) -> None:
        await self.ctx.storage.put(key, value)

    async def delete(self, key: str) -> None:
        await self.ctx.storage.delete(key)

    async def txn(self, puts: dict[str, Any], fail: bool) -> None:
        async with self.ctx.storage.transaction() as t:
            for k, v in puts.items():
                await t.put(k, v)
            if fail:
                raise ValueError("rolled back")

    async def debit(self, amount: int) -> bool:
        balance = await self.ctx.storage.get("balance", 100)
        if balance < amount:
            return False
        await self.ctx.storage.put("balance", balance - amount)
        return True

    async def alarm_set(self, when: int) -> None:
        await self.ctx.storage.set_alarm(when)

    async def alarm_delete(self) -> None:
        await self.ctx.storage.delete_alarm()

    async def wipe(self) -> None:
        await self.ctx.storage.delete_all()

    async def dump(self) -> tuple[dict[str, Any], int | None]:
        return await self.ctx.storage.list(limit=1000), await self.ctx.storage.get_alarm()


State = tuple[dict[str, Any], int | None]


def apply(state: State, op: tuple[Any, ...]) -> State:
    """The model: what op does to an instance's (storage, alarm)."""
    kv, alarm = dict(state[0]), state[1]
    kind = op[0]
    if kind == "put":
        kv[op[1]] = op[2]
    elif kind == "delete":
        kv.pop(op[1], None)
    elif kind == "txn":
        if not op[2]:
            kv.update(op[1])
    elif kind == "debit":
        balance = kv.get("balance", 100)
        if balance >= op[1]:
            kv["balance"] = balance - op[1]
    elif kind == "alarm_set":
        alarm = op[1]
    elif kind == "alarm_delete":
        alarm = None
    elif kind == "wipe":
        kv = {}
    return kv, alarm


def _key(state: State) -> tuple[Any, ...]:
    return tuple(sorted(state[0].items())), state[1]


def random_op(rnd: random.Random) -> tuple[Any, ...]:
    kind = rnd.choice(
        ["put", "put", "delete", "txn", "debit", "debit", "alarm_set", "alarm_delete", "wipe"]
    )
    key = f"k{rnd.randrange(6)}"
    if kind == "put":
        return ("put", key, rnd.choice([rnd.randrange(1000), "x" * rnd.randrange(2000)]))
    if kind == "delete":
        return ("delete", key)
    if kind == "txn":
        puts = {f"k{rnd.randrange(6)}": rnd.randrange(1000) for _ in range(rnd.randrange(1, 4))}
        return ("txn", puts, rnd.random() < 0.25)
    if kind == "debit":
        return ("debit", rnd.randrange(1, 30))
    if kind == "alarm_set":
        return ("alarm_set", FAR + rnd.randrange(10**6))
    if kind == "wipe" and rnd.random() < 0.5:
        return ("put", key, None)
    return (kind,)


@dataclass
class Stats:
    crashes: int = 0
    turns: int = 0
    acked: int = 0
    unacked_lost: int = 0  # instances whose unacknowledged turns all left no trace
    mangled: dict[str, int] = field(default_factory=dict)


def lose_power(data: Path, segment: str, synced: int, rnd: random.Random, st: Stats) -> None:
    """What a power cut may leave of the bytes written after the last fdatasync."""
    path = data / "log" / segment
    size = path.stat().st_size
    if size <= synced:
        st.mangled["nothing unsynced"] = st.mangled.get("nothing unsynced", 0) + 1
        return
    mode = rnd.choice(["keep", "cut", "sectors"])
    st.mangled[mode] = st.mangled.get(mode, 0) + 1
    if mode == "keep":
        return
    with open(path, "r+b") as f:
        if mode == "cut":
            f.truncate(rnd.randrange(synced, size + 1))
        else:
            # Each sector after the synced point: kept, zeroed or garbled; the file may also
            # end early (its size was not made durable either).
            start = synced
            while start < size:
                end = min(size, (start // SECTOR + 1) * SECTOR)
                fate = rnd.random()
                if fate < 0.2:
                    f.seek(start)
                    f.write(bytes(end - start))
                elif fate < 0.35:
                    f.seek(start)
                    f.write(rnd.randbytes(end - start))
                start = end
            if rnd.random() < 0.3:
                f.truncate(rnd.randrange(synced, size + 1))
        f.flush()


async def one_crash(data: Path, model: dict[str, State], rnd: random.Random, st: Stats) -> None:
    # Half the runs keep few instances resident, or cache few bytes of values, so that
    # instances are evicted (and reloaded) between their turns, while commits are in flight.
    bounds = rnd.choice([{}, {"max_resident": 3}, {"max_cache_bytes": 4096}])
    rt = Runtime(
        data,
        [Sim],
        checkpoint_interval=rnd.choice([0.005, 0.05, 30.0]),
        group_delay_us=0,
        **bounds,
    )
    await rt.start()
    ns = rt.namespace("Sim")
    ops: dict[str, list[tuple[Any, ...]]] = {n: [] for n in NAMES}
    acked: dict[str, set[int]] = {n: set() for n in NAMES}  # per instance: acked turns
    fault = rnd.random() < 0.85  # else: a crash with nothing unsynced in flight
    if fault:
        rt.shard.wal._inject_fault("halt", rnd.randrange(0, 4), errno.EIO)

    async def run(name: str, op: tuple[Any, ...], index: int) -> None:
        try:
            await getattr(ns.id_from_name(name), op[0])(*op[1:])
        except ActorOutputGateError:
            return
        except ActorMethodError as e:
            if not (op[0] == "txn" and op[2] and e.remote_type == "ValueError"):
                raise
            # The failed transaction's turn raised: a reply, and no writes.
        acked[name].add(index)

    for _ in range(8):  # rounds of calls, until the armed fault has stopped the log
        calls = []
        for _ in range(rnd.randrange(1, 60)):
            name = rnd.choice(NAMES)
            op = random_op(rnd)
            ops[name].append(op)
            calls.append(run(name, op, len(ops[name]) - 1))
        await asyncio.gather(*calls)
        if not fault or rt.shard.wal.failed is not None:
            break
    if rnd.random() < 0.5:
        await asyncio.sleep(rnd.choice([0, 0.001, 0.01]))  # let a checkpoint run
    wal = rt.shard.wal.stats()
    crash(rt)
    lose_power(data, wal["segment"], wal["segment_synced"], rnd, st)

    rt = Runtime(data, [Sim])
    await rt.start()
    try:
        for name in NAMES:
            got = await rt.namespace("Sim").id_from_name(name).dump()
            # Every state the turns can lead to: acked ones applied, others applied or not.
            possible = {_key(model[name]): model[name]}
            for i, op in enumerate(ops[name]):
                after = {_key(n): n for n in (apply(s, op) for s in possible.values())}
                possible = after if i in acked[name] else possible | after
            if _key(got) not in possible:
                raise AssertionError(
                    f"crash {st.crashes}: {name}: recovered {got!r}, which its turns {ops[name]!r}"
                    f" (acknowledged: {sorted(acked[name])}) can not give"
                )
            if got[0].get("balance", 100) < 0:
                raise AssertionError(f"crash {st.crashes}: {name}: negative balance")
            st.acked += len(acked[name])
            st.turns += len(ops[name])
            st.unacked_lost += got == model[name] and len(acked[name]) < len(ops[name])
            model[name] = got
    finally:
        await rt.close()
    st.crashes += 1


def simulate(data: Path, crashes: int, seed: int) -> Stats:
    rnd = random.Random(seed)
    st = Stats()
    model: dict[str, State] = {n: ({}, None) for n in NAMES}

    async def go() -> None:
        for _ in range(crashes):
            await one_crash(data, model, rnd, st)

    uvloop.run(go())
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crashes", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ap.add_argument("--data", default=".powerloss-data")
    args = ap.parse_args()
    # Torn tails and failed checkpoints are what this makes happen: keep the output to errors.
    logging.getLogger("fastactor").setLevel(logging.ERROR)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    st = simulate(data, args.crashes, args.seed)
    print(
        f"seed {args.seed}: {st.crashes} simulated power losses, 0 violations, in "
        f"{time.perf_counter() - t:.0f} s; {st.turns} turns ({st.acked} acknowledged, all "
        f"kept); "
        f"unsynced tails: {st.mangled}"
    )
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
