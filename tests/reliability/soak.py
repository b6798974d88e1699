"""Soak: `fastactor serve examples/account --workers 2` under steady load for a long while,
sampling every worker's memory. Not part of the test suite (it takes minutes).

    python tests/reliability/soak.py --minutes 10 [--fraction 0.8]

First the peak: CONNECTIONS clients send deposits and debits as fast as replies come, for
20 s. Then the soak: the same clients paced to FRACTION of that rate for MINUTES. Every 10 s
it samples each worker's RSS (/proc/PID/status) and the latency of the requests in that
window. It reports the RSS at the start and the end of the soak (growth: the mean of the
last minute over the mean of the first minute after one minute of warm-up), every non-2xx
reply, and p50/p99 per minute. The load generator runs on the same host (its CPU is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from crashloop import kill, request, start  # noqa: E402


def worker_rss(p: subprocess.Popen[str]) -> list[int]:
    """KiB of RSS of each worker process (the supervisor's children)."""
    out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout
    rss = []
    for pid in out.split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        rss += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")]
    return rss


async def drive(
    port: int,
    conns: int,
    seconds: float,
    rate: float | None,
    windows: list[list[float]],
    errors: list[str],
) -> int:
    """Runs CONNS clients for SECONDS, at RATE requests/s in all (None: as fast as they can).
    Latencies (s) go into the current last list of WINDOWS."""
    done = 0
    end = time.monotonic() + seconds
    interval = conns / rate if rate else 0.0

    async def client(k: int) -> None:
        nonlocal done
        rnd = random.Random(k)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        nxt = time.monotonic() + rnd.uniform(0, interval)
        try:
            while (now := time.monotonic()) < end:
                if interval:
                    if nxt > now:
                        await asyncio.sleep(nxt - now)
                    nxt += interval
                op = "deposit" if rnd.random() < 0.6 else "debit"
                body = json.dumps({"amount": rnd.randrange(1, 50)}).encode()
                t = time.perf_counter()
                status, reply = await request(
                    reader, writer, "POST", f"/accounts/s{rnd.randrange(1000)}/{op}", body
                )
                windows[-1].append(time.perf_counter() - t)
                if status != 200:
                    errors.append(f"{status} {reply}")
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(conns)))
    return done


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000 if xs else float("nan")


def soak(data: Path, minutes: float, fraction: float, conns: int) -> None:
    port = random.randrange(20000, 60000)
    p = start(data, port)
    try:
        windows: list[list[float]] = [[]]
        errors: list[str] = []
        peak = asyncio.run(drive(port, conns, 20.0, None, windows, errors)) / 20.0
        rate = peak * fraction
        print(
            f"peak {peak:,.0f} req/s with {conns} connections; soak at {rate:,.0f} req/s "
            f"for {minutes:g} min",
            flush=True,
        )
        samples: list[tuple[float, list[int], float, float]] = []

        async def run() -> None:
            t0 = time.monotonic()

            async def sampler() -> None:
                while time.monotonic() - t0 < minutes * 60:
                    await asyncio.sleep(10)
                    lat = windows[-1]
                    windows.append([])
                    samples.append(
                        (time.monotonic() - t0, worker_rss(p), pct(lat, 0.5), pct(lat, 0.99))
                    )
                    s = samples[-1]
                    print(
                        f"  {s[0]:5.0f} s  rss KiB {s[1]}  p50 {s[2]:.2f} ms  "
                        f"p99 {s[3]:.2f} ms  errors {len(errors)}",
                        flush=True,
                    )

            windows.append([])
            await asyncio.gather(
                drive(port, conns, minutes * 60, rate, windows, errors), sampler()
            )

        asyncio.run(run())
        warm = [s for s in samples if s[0] > 60]
        first = [sum(s[1]) for s in warm[:6]]
        last = [sum(s[1]) for s in warm[-6:]]
        growth = statistics.mean(last) / statistics.mean(first) - 1
        p99s = [s[3] for s in warm]
        print(
            f"soak {minutes:g} min at {fraction:.0%} of peak ({rate:,.0f} req/s): worker RSS "
            f"{samples[0][1]} KiB at the start, {samples[-1][1]} KiB at the end; growth after "
            f"warm-up {growth:+.1%}; {len(errors)} error replies; p99 per 10 s window "
            f"{min(p99s):.1f}..{max(p99s):.1f} ms (median {statistics.median(p99s):.1f} ms)"
        )
        for e in errors[:10]:
            print("  error:", e)
    finally:
        kill(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--data", default="build/soak")
    args = ap.parse_args()
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    soak(data, args.minutes, args.fraction, args.connections)
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
