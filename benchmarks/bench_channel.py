"""Calls forwarded between two shard workers over the worker channel, against local calls.

    python benchmarks/bench_channel.py [calls] [rounds]

Question answered: what does a call to an instance another worker owns cost, in CPU of the
caller's process and of the owner's process (log flusher threads included), next to the same
debit on a local instance? Two processes as under `fastactor serve --workers 2`: this one
(worker 0, the caller, with its own shard for the local reference) and an owner (worker 1)
serving its shard on a Unix socket. 64 concurrent callers, debits spread over the ~500 of 1000
accounts each worker owns; every reply released only once durable (the logs under
.bench-data, real fdatasync).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
CALLERS = 64
TCK = os.sysconf("SC_CLK_TCK")

# Both processes load the quick start's Account from examples/account/app.py.
SETUP = r"""
import asyncio, importlib.util, sys
from fastactor._core import Shard
from fastactor.runtime import Env
spec = importlib.util.spec_from_file_location("bench_channel_app", sys.argv[2])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
"""
OWNER = (
    SETUP
    + r"""
import uvloop
from fastactor.server.ipc import serve_calls
async def main():
    shard = Shard(sys.argv[1] + "/shard-1", Env({}), group_window_us=int(sys.argv[4]))
    shard.open()
    ns = shard.namespace("Account", app.Account)
    await serve_calls(sys.argv[3], {"default/Account": ns})
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""
)


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


async def drive(stubs: list[Any], total: int) -> None:
    left = [total]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            r = await stubs[random.randrange(len(stubs))].debit(1)
            assert r["ok"], r

    await asyncio.gather(*[caller() for _ in range(CALLERS)])


async def run(base: Path, calls: int, rounds: int, window_us: int) -> dict[str, list[float]]:
    from fastactor._core import Shard
    from fastactor.runtime import Env
    from fastactor.server.ipc import Channel, RoutedNamespace

    sys.path.insert(0, str(ROOT / "examples" / "account"))
    import app  # the quick start's Account

    sock = str(base / "w1.sock")
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(base), str(ROOT / "examples/account/app.py"), sock]
        + [str(window_us)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out: dict[str, list[float]] = {"local": [], "remote caller": [], "remote owner": []}
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        shard = Shard(str(base / "shard-0"), Env({}), group_window_us=window_us)
        shard.open()
        local = shard.namespace("Account", app.Account)
        channel = Channel([str(base / "w0.sock"), sock])
        ns = RoutedNamespace(local, "default", "Account", 0, 2, channel)
        names = [f"acct-{i}" for i in range(1000)]
        mine = [ns.id_from_name(n) for n in names if ns.owner(n) == 0]
        theirs = [ns.id_from_name(n) for n in names if ns.owner(n) == 1]
        await asyncio.gather(*[s.deposit(10**9) for s in mine + theirs])
        await drive(mine + theirs, calls // 10)  # warm-up
        for _ in range(rounds):
            # Process CPU: the log's flusher thread counts, here as in the owner.
            t0 = time.process_time()
            await drive(mine, calls)
            out["local"].append((time.process_time() - t0) / calls)
            t0, o0 = time.process_time(), cpu_of(owner.pid)
            await drive(theirs, calls)
            out["remote caller"].append((time.process_time() - t0) / calls)
            out["remote owner"].append((cpu_of(owner.pid) - o0) / calls)
        channel.close()
        await shard.close()
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    return out


def main(calls: int = 50_000, rounds: int = 3, window_us: int = 400) -> str:
    base = Path(os.environ.get("FASTACTOR_BENCH_DIR", ROOT / ".bench-data"))
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="bench-channel-", dir=base))
    try:
        out = uvloop.run(run(d, calls, rounds, window_us))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    med = {k: statistics.median(v) * 1e6 for k, v in out.items()}
    lines = [
        f"host: nproc={os.cpu_count()}, {calls:,} debits x {rounds} rounds (medians), "
        f"{CALLERS} concurrent callers, commit window {window_us} µs",
        "",
        "| call | caller process CPU per call | owner process CPU per call |",
        "|---|---:|---:|",
        f"| local instance (reference) | {med['local']:.1f} µs | - |",
        f"| instance on the other worker | {med['remote caller']:.1f} µs "
        f"| {med['remote owner']:.1f} µs |",
        "",
        f"forwarded / local, both processes: "
        f"{(med['remote caller'] + med['remote owner']) / med['local']:.2f}",
    ]
    return "\n".join(lines)


def test_channel(benchmark: Any) -> None:
    table = benchmark.pedantic(lambda: main(2000, 1), rounds=1, iterations=1)
    assert "instance on the other worker" in table


if __name__ == "__main__":
    print(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 50_000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3,
        )
    )
