"""Durable appends per second through the log, against the disk's own fdatasync rate.

    python benchmarks/bench_wal.py              # the table for BENCHMARKS.md
    python -m pytest benchmarks/bench_wal.py --benchmark-enable   # pytest-benchmark suite

Question answered: how many 64-byte records per second become durable with N concurrent
waiters, and how does that compare with `write(64 B) + fdatasync` in a loop on the same disk
in the same run? Rounds interleave the reference and the log so drift hits both alike.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fastactor import WriteAheadLog

RECORD = b"r" * 64
WAITERS = (1, 16, 256, 4096)
BENCH_DIR = Path(os.environ.get("FASTACTOR_BENCH_DIR", ".bench-data")).resolve()


def fresh_dir(name: str) -> Path:
    d = BENCH_DIR / name
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    return d


def raw_fdatasync(n: int, over_zeros: bool = False) -> float:
    """write(64 B) + fdatasync in a loop, appending to one file: syncs per second. OVER_ZEROS:
    the file's bytes are written (zeros, made durable) first, so no fdatasync of the loop
    changes the file's size, as the log's do (it writes zeros ahead of its records)."""
    d = fresh_dir("raw")
    d.mkdir()
    fd = os.open(d / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if over_zeros:
            os.write(fd, bytes(len(RECORD) * n))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        t = time.perf_counter()
        for _ in range(n):
            os.write(fd, RECORD)
            os.fdatasync(fd)
        return n / (time.perf_counter() - t)
    finally:
        os.close(fd)


def durable_appends(waiters: int, n: int) -> tuple[float, float]:
    """WAITERS tasks, each appending one 64-byte record and awaiting its durability, N records
    in all. Returns (records per second, records per fdatasync)."""
    d = fresh_dir(f"log{waiters}")

    async def go() -> tuple[float, float]:
        w = WriteAheadLog(d)
        per_task = max(1, n // waiters)

        async def worker() -> None:
            append, wait = w.append, w.wait_durable
            for _ in range(per_task):
                await wait(append(RECORD))

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(waiters)))
        dt = time.perf_counter() - t
        total = per_task * waiters
        per_batch = total / max(1, w.batches)
        w.close()
        return total / dt, per_batch

    return uvloop.run(go())


def append_hot_path(samples: int = 300, per_sample: int = 1000) -> float:
    """Median microseconds of one append() from Python (the log drained between samples)."""
    d = fresh_dir("hot")
    times = []
    with WriteAheadLog(d) as w:
        append = w.append
        for _ in range(samples):
            t = time.perf_counter_ns()
            for _ in range(per_sample):
                append(RECORD)
            times.append((time.perf_counter_ns() - t) / per_sample / 1000)
            w.sync(w.last_lsn)
    return statistics.median(times)


SIZES = {1: 1000, 16: 15000, 256: 150000, 4096: 600000}


def table(rounds: int = 7) -> str:
    """Each round measures the reference and then every waiter count, back to back; a ratio
    is taken within its round (so slow drift of the disk cancels), then the median."""
    raws: list[float] = []
    zraws: list[float] = []
    zratios: dict[int, list[float]] = {k: [] for k in WAITERS}
    rates: dict[int, list[float]] = {k: [] for k in WAITERS}
    ratios: dict[int, list[float]] = {k: [] for k in WAITERS}
    batch: dict[int, list[float]] = {k: [] for k in WAITERS}
    for _ in range(rounds):
        raw = raw_fdatasync(1000)
        raws.append(raw)
        zraw = raw_fdatasync(1000, over_zeros=True)
        zraws.append(zraw)
        for k in WAITERS:
            r, b = durable_appends(k, SIZES[k])
            rates[k].append(r)
            ratios[k].append(r / raw)
            zratios[k].append(r / zraw)
            batch[k].append(b)
    med = statistics.median
    lines = [
        f"host: nproc={os.cpu_count()}  dir={BENCH_DIR}  rounds={rounds} (medians)",
        f"reference: write(64 B)+fdatasync loop = {med(raws):,.0f}/s "
        f"(range {min(raws):,.0f} to {max(raws):,.0f}); the same over zeros written first "
        f"(no size change) = {med(zraws):,.0f}/s",
        "",
        "| waiters | durable appends/s | records per fdatasync | ratio vs raw fdatasync "
        "| ratio vs raw over zeros |",
        "|--------:|------------------:|----------------------:|-----------------------:"
        "|------------------------:|",
    ]
    for k in WAITERS:
        lines.append(
            f"| {k} | {med(rates[k]):,.0f} | {med(batch[k]):,.1f} | {med(ratios[k]):.2f} "
            f"(range {min(ratios[k]):.2f} to {max(ratios[k]):.2f}) | {med(zratios[k]):.2f} |"
        )
    lines.append("")
    lines.append(f"append() hot path: median {append_hot_path():.3f} µs")
    return "\n".join(lines)


# -- pytest-benchmark ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_rate() -> float:
    return raw_fdatasync(500)


def _run(benchmark: Any, fn: Callable[[], float], raw: float | None) -> None:
    out: list[float] = []
    benchmark.pedantic(lambda: out.append(fn()), rounds=3, iterations=1)
    rate = statistics.median(out)
    benchmark.extra_info["per_second"] = round(rate)
    if raw:
        benchmark.extra_info["ratio_vs_raw_fdatasync"] = round(rate / raw, 3)


def test_raw_fdatasync(benchmark: Any) -> None:
    _run(benchmark, lambda: raw_fdatasync(500), None)


@pytest.mark.parametrize("waiters", WAITERS)
def test_durable_appends(benchmark: Any, raw_rate: float, waiters: int) -> None:
    _run(benchmark, lambda: durable_appends(waiters, SIZES[waiters] // 3)[0], raw_rate)


def test_append_hot_path(benchmark: Any) -> None:
    d = fresh_dir("hot-pytest")
    with WriteAheadLog(d) as w:
        benchmark.pedantic(
            lambda: [w.append(RECORD) for _ in range(1000)],
            setup=lambda: w.sync(w.last_lsn) if w.last_lsn else None,
            rounds=100,
            iterations=1,
        )


if __name__ == "__main__":
    print(table(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
