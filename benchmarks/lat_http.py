"""Where a request's time goes under bench_http's spread load: the stub call inside fetch,
split by where the instance lives (this worker's own shard, or another worker's).

    python benchmarks/lat_http.py [seconds] [-- serve options]

Question answered: of the p50 a client sees (the load generator's), how long does `await
account.debit(...)` take when the account is on the worker that runs fetch, and when the call
crosses to the worker that owns it? The reference is the first figure itself: the local call is
the commit cycle (the turn, the commit window, the fdatasync, the loop's wake-up), so what a
forwarded call takes beyond it is the price of the crossing. The example's own source is served
with the one line of its fetch that calls the stub timed (perf_counter, a histogram of 20 µs
bins per kind); each worker writes its histograms to a file the script reads after the run. The
timing costs about a tenth of the throughput. The load is bench_http's (2 threads, 64
connections, deposits first, then POST debit over 1000 accounts) against `serve --workers 2`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_http  # noqa: E402

# The timed function: the example's own source, with the stub call in its fetch timed (the
# line below, which the script checks is there) and the times kept in a histogram per kind.
CALL = "        result = await getattr(account, parts[2])(amount)\n"
TIMED = (
    "        t0 = time.perf_counter()\n"
    + CALL
    + "        _record(account.id, parts[2], time.perf_counter() - t0)\n"
)
HEAD = textwrap.dedent(
    """\
    import json, os, sys, time
    from fastactor.server.layout import owner_of

    _BIN = 20e-6                             # histogram bins of 20 µs, up to 100 ms
    _TIMES = {{"local": [0] * 5001, "forwarded": [0] * 5001}}
    _WHERE = {{}}                             # instance name -> "local" or "forwarded"
    _STATE = []                              # [calls, this worker's index, workers]


    def _record(name, method, seconds):
        if method != "debit":                # the deposits before the load: not timed
            return
        if not _STATE:                       # the configuration worker.py runs with (the
            cfg = json.loads(sys.argv[-1])   # supervisor imports this module too: it has none)
            _STATE.extend((0, cfg["index"], cfg["workers"]))
        where = _WHERE.get(name)
        if where is None:
            mine = owner_of("default", "Account", name, _STATE[2]) == _STATE[1]
            where = _WHERE[name] = "local" if mine else "forwarded"
        _TIMES[where][min(5000, int(seconds / _BIN))] += 1
        _STATE[0] += 1
        if _STATE[0] % 5000 == 0:
            out = os.path.join({out!r}, f"worker-{{_STATE[1]}}.json")
            with open(out + ".tmp", "w") as f:
                json.dump(_TIMES, f)
            os.replace(out + ".tmp", out)

    """
)


def timed_app(out: Path) -> str:
    src = (bench_http.EXAMPLE / "app.py").read_text()
    if src.count(CALL) != 1 or "__future__" in src:
        raise SystemExit(
            "lat_http: examples/account/app.py no longer has the one stub call line this "
            "script times (or it has a __future__ import, which must stay first)"
        )
    return HEAD.format(out=str(out)) + src.replace(CALL, TIMED)


BIN_MS = 0.02  # the app's histogram bins


def summary(hist: list[int]) -> str:
    n = sum(hist)
    if not n:
        return "none"

    def quantile(q: float) -> float:
        seen = 0
        for i, c in enumerate(hist):
            seen += c
            if seen >= q * n:
                return (i + 0.5) * BIN_MS
        return len(hist) * BIN_MS

    mean = sum((i + 0.5) * BIN_MS * c for i, c in enumerate(hist)) / n
    return (
        f"{n:,} calls, mean {mean:.2f} ms, p50 {quantile(0.5):.2f} ms, p90 {quantile(0.9):.2f} ms"
    )


def run(seconds: int, extra: list[str]) -> str:
    root = Path(tempfile.mkdtemp(prefix="fastactor-lat-http-"))
    fn, out, data = root / "fn", root / "out", root / "data"
    fn.mkdir()
    out.mkdir()
    (fn / "fastactor.toml").write_text(
        'name = "account"\nmain = "app.py"\n\n[[actors]]\nbinding = "ACCOUNT"\ntype = "Account"\n'
    )
    (fn / "app.py").write_text(timed_app(out))
    port = 18000 + os.getpid() % 20000
    url = f"http://127.0.0.1:{port}/"
    srv = bench_http.subprocess.Popen(
        ["fastactor", "serve", str(fn), "--port", str(port), "--workers", "2"]
        + ["--data", str(data), *extra],
        stdout=bench_http.subprocess.PIPE,
        text=True,
        process_group=0,
    )
    try:
        bench_http.wait_serving(srv)
        bench_http.drive(url, bench_http.DEPOSIT_LUA, 2, threads=1)
        w = bench_http.drive(url, bench_http.SPREAD_LUA, seconds)
        time.sleep(0.5)
        times: dict[str, list[int]] = {"local": [0] * 5001, "forwarded": [0] * 5001}
        for f in sorted(out.glob("worker-*.json")):
            for k, v in json.loads(f.read_text()).items():
                times[k] = [a + b for a, b in zip(times[k], v, strict=True)]
    finally:
        bench_http.stop([srv])
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join(
        [
            f"host: nproc={os.cpu_count()}, {bench_http.generator()} -d{seconds}s, "
            f"spread debits, fastactor serve --workers 2 {' '.join(extra)}".rstrip(),
            f"client (wrk): {w['rps']:,.0f} req/s, p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms",
            f"stub call, instance on the worker running fetch: {summary(times['local'])}",
            f"stub call, instance on the other worker: {summary(times['forwarded'])}",
        ]
    )


if __name__ == "__main__":
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    print(run(int(argv[0]) if argv else 8, extra))
