"""Interleaved A/B of `fastactor serve` option sets, against the trivial server.

    python benchmarks/ab_serve.py SECONDS ROUNDS [--workload spread|hot] [--workers N] \\
        "--commit-window-us 400" "--commit-window-us 750" ...

Question answered: does an option change move durable debits per second, on a VM whose speed
drifts by tens of percent from one minute to the next? Every variant serves at once (each its
own `serve --workers N` and data directory; the idle ones cost nothing), and each round runs
the trivial uvloop server of bench_http, then every variant, in alternating order. The table
gives each variant's median ratio to the trivial server over the rounds, the ratio in each
round, and the median p50. A change is real where it wins in every round, not by the median
alone.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_http as bh  # noqa: E402


def run(seconds: int, rounds: int, workload: str, workers: int, variants: list[str]) -> str:
    lua = {"spread": bh.SPREAD_LUA, "hot": bh.HOT_LUA}[workload]
    port = 19000
    data = Path(tempfile.mkdtemp(prefix="fastactor-ab-"))
    procs = [bh.start_trivial(port)]
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    p50: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for i, v in enumerate(variants):
            procs.append(bh.start_serve(port + 1 + i, workers, data / str(i), *shlex.split(v)))
        for p in procs[1:]:
            bh.wait_serving(p)
        for i in range(len(variants)):
            bh.drive(f"http://127.0.0.1:{port + 1 + i}/", bh.DEPOSIT_LUA, 2, threads=1)
        for r in range(rounds):
            trivial = bh.drive(f"http://127.0.0.1:{port}/", bh.HOT_LUA, seconds)["rps"]
            for v in variants if r % 2 == 0 else variants[::-1]:
                got = bh.drive(f"http://127.0.0.1:{port + 1 + variants.index(v)}/", lua, seconds)
                ratios[v].append(got["rps"] / trivial)
                p50[v].append(got["p50"])
    finally:
        bh.stop(procs)
        shutil.rmtree(data, ignore_errors=True)
    lines = [
        f"{workload} debits, serve --workers {workers}, {bh.generator()} "
        f"-d{seconds}s, {rounds} interleaved rounds",
        "",
        "| serve options | vs trivial server (median) | each round | p50 ms (median) |",
        "|---|---:|---|---:|",
    ]
    for v in variants:
        each = ", ".join(f"{x:.3f}" for x in ratios[v])
        lines.append(
            f"| `{v or '(defaults)'}` | {statistics.median(ratios[v]):.3f} | {each} | "
            f"{statistics.median(p50[v]):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", type=int)
    ap.add_argument("rounds", type=int)
    ap.add_argument("--workload", choices=("spread", "hot"), default="spread")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "variants", nargs="+", help='serve options of one variant, quoted; "" = defaults'
    )
    a = ap.parse_args()
    print(run(a.seconds, a.rounds, a.workload, a.workers, a.variants))
