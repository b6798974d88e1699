"""Crash loop under load: `fastactor serve examples/account --workers 2` driven with
deposits and debits over many keep-alive connections, SIGKILLed (the whole process tree) at
random moments, restarted over the same data directory, and checked: every acknowledged
deposit and debit is reflected in the balances.

    python tests/reliability/crashloop.py --cycles 100 [--connections 64] [--accounts 200]
        [--serve-args "--max-resident 20"]

Per account the check is exact up to the requests in flight at the kill (sent, no reply):
    acked deposits - acked debits - in-flight debits
        <= balance - balance before the cycle <=
    acked deposits - acked debits + in-flight deposits
and, before each restart, `fastactor actors check` (check_shard) finds every shard whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fastactor.inspect_data import check_shard, shards

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = ROOT / "examples" / "account"


class Account:
    __slots__ = ("balance", "deposited", "debited", "maybe_in", "maybe_out")

    def __init__(self) -> None:
        self.balance = 0  # known at the start of the cycle
        self.deposited = self.debited = self.maybe_in = self.maybe_out = 0


async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    body: bytes = b"",
) -> tuple[int, dict[str, object]]:
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"content-length: (\d+)", head, re.I)
    data = await reader.readexactly(int(m.group(1)) if m else 0)
    return status, json.loads(data)


async def load(port: int, accounts: dict[str, Account], conns: int, seconds: float) -> int:
    """Drives deposits and debits until SECONDS pass or the server goes away; returns the
    number of acknowledged requests."""
    names = list(accounts)
    acked = 0
    deadline = time.monotonic() + seconds

    async def client(k: int) -> None:
        nonlocal acked
        rnd = random.Random(k ^ int(time.time()))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            while time.monotonic() < deadline:
                name = rnd.choice(names)
                a = accounts[name]
                op = "deposit" if rnd.random() < 0.6 else "debit"
                amount = rnd.randrange(1, 50)
                if op == "deposit":
                    a.maybe_in += amount
                else:
                    a.maybe_out += amount
                try:
                    status, reply = await request(
                        reader,
                        writer,
                        "POST",
                        f"/accounts/{name}/{op}",
                        json.dumps({"amount": amount}).encode(),
                    )
                except (OSError, asyncio.IncompleteReadError):
                    return  # killed: this one stays "in flight"
                if op == "deposit":
                    a.maybe_in -= amount
                else:
                    a.maybe_out -= amount
                assert status == 200, (status, reply)
                if reply["ok"]:
                    if op == "deposit":
                        a.deposited += amount
                    else:
                        a.debited += amount
                acked += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(conns)))
    return acked


def start(data: Path, port: int, extra: Sequence[str] = ()) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [
            "fastactor",
            "serve",
            str(ACCOUNT),
            "--workers",
            "2",
            "--port",
            str(port),
            "--data",
            str(data),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        lines.append(line)
        if "→ http://" in line:
            return p
        if not line and p.poll() is not None:
            break
    os.killpg(p.pid, signal.SIGKILL)
    raise RuntimeError("the server did not start:\n" + "".join(lines))


def kill(p: subprocess.Popen[str]) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(30)
    if p.stdout is not None:
        p.stdout.close()


async def check(port: int, accounts: dict[str, Account], cycle: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for name, a in accounts.items():
            status, reply = await request(reader, writer, "GET", f"/accounts/{name}")
            assert status == 200, reply
            got = int(reply["balance"])  # type: ignore[call-overload]
            low = a.balance + a.deposited - a.debited - a.maybe_out
            high = a.balance + a.deposited - a.debited + a.maybe_in
            if not low <= got <= high or got < 0:
                raise AssertionError(
                    f"cycle {cycle}: {name}: balance {got}, expected {low}..{high} "
                    f"(before {a.balance}, acked +{a.deposited} -{a.debited}, "
                    f"in flight +{a.maybe_in} -{a.maybe_out})"
                )
            accounts[name] = Account()
            accounts[name].balance = got
    finally:
        writer.close()


def crash_loop(
    data: Path, cycles: int, conns: int, n_accounts: int, seed: int, extra: Sequence[str] = ()
) -> dict[str, int]:
    """EXTRA: more options for `fastactor serve`."""
    rnd = random.Random(seed)
    port = rnd.randrange(20000, 60000)
    accounts = {f"a{i}": Account() for i in range(n_accounts)}
    total_acked = 0
    p = start(data, port, extra)
    try:
        for cycle in range(cycles):
            seconds = rnd.uniform(0.3, 2.0)
            kill_at = rnd.uniform(0.1, seconds)

            async def run(p: subprocess.Popen[str], kill_at: float, seconds: float) -> int:
                loop = asyncio.get_running_loop()
                loop.call_later(kill_at, kill, p)  # SIGKILL mid-load
                return await load(port, accounts, conns, seconds)

            total_acked += asyncio.run(run(p, kill_at, seconds))
            kill(p)
            # What kill -9 leaves is at most a torn tail, never damage: `fastactor actors
            # check` must say so of every shard before the restart (which cuts the tail).
            for shard in shards(data):
                check_shard(shard)
            p = start(data, port, extra)
            asyncio.run(check(port, accounts, cycle))
    finally:
        kill(p)
    return {"cycles": cycles, "acked": total_acked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--data", default="build/crashloop")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ap.add_argument("--serve-args", default="", help="more options for fastactor serve")
    args = ap.parse_args()
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    extra = shlex.split(args.serve_args)
    r = crash_loop(data, args.cycles, args.connections, args.accounts, args.seed, extra)
    print(
        f"seed {args.seed}: {r['cycles']} kill -9 cycles of `fastactor serve --workers 2"
        f"{''.join(' ' + a for a in extra)}` "
        f"under load ({args.connections} connections, {args.accounts} accounts), "
        f"{r['acked']} acknowledged requests, 0 lost, in {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
