"""Where the CPU goes under bench_http's loads: per request, each thread of `fastactor serve`,
the load generator, and the whole machine.

    python benchmarks/cpu_http.py [seconds] [workload ...] [--workers N] [-- serve options]

Question answered: how many µs of CPU does one request cost the workers' event loops, their log
flushers, and the load generator, how many context switches does it cause, and how many records
share an fdatasync? The reference is the trivial uvloop + httptools server of bench_http,
measured the same way in the same run (workload "trivial"). Workloads: trivial, floor
(bench_http's durable floor), health, spread, hot (bench_http's), and pair: the spread load on
two separate `--workers 1` servers at once, half the connections each (two generators, 1 thread
and 32 connections each), so two loops and two flushers share the cores as under --workers 2
but no call crosses between them; onelog: the spread load over only those of the 1000 accounts
that worker 0 owns (with two workers), so one log takes every write while half the calls still
cross (against spread, what running turns in both workers costs); balance: GET
/accounts/<name> over the spread's 1000 accounts, the same calls crossing as often but reading
only, so no turn writes (against spread, what the durable commits cost). Counters come from /proc
(utime + stime per thread, context switches) and the servers' /metrics; the figures are per
request answered.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_http  # noqa: E402

from fastactor.server.layout import owner_of  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")
OWN0 = [i for i in range(1000) if owner_of("default", "Account", f"acct-{i}", 2) == 0]
ONELOG_LUA = (
    "math.randomseed(os.time())\nlocal own = {" + ",".join(map(str, OWN0)) + "}\n"
    "request = function()\n"
    '  return wrk.format("POST", "/accounts/acct-" .. own[math.random(1, #own)] .. "/debit",'
    """ nil, '{"amount": 1}')\nend\n"""
)
BALANCE_LUA = (
    "math.randomseed(os.time())\nrequest = function()\n"
    '  return wrk.format("GET", "/accounts/acct-" .. math.random(0, 999), nil, nil)\nend\n'
)
LUA = {
    "trivial": bench_http.HOT_LUA,
    "floor": bench_http.HOT_LUA,
    "health": bench_http.HEALTH_LUA,
    "spread": bench_http.SPREAD_LUA,
    "hot": bench_http.HOT_LUA,
    "pair": bench_http.SPREAD_LUA,
    "onelog": ONELOG_LUA,
    "balance": BALANCE_LUA,
}
bench_http.LOADGEN_REQUESTS[BALANCE_LUA] = (
    [f"GET\t/accounts/acct-{i}\t" for i in range(1000)],
    True,
)
bench_http.LOADGEN_REQUESTS[ONELOG_LUA] = (
    [f'POST\t/accounts/acct-{i}/debit\t{{"amount": 1}}' for i in OWN0],
    True,
)


def tree(pid: int) -> list[int]:
    out = [pid]
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for c in kids.split():
        out += tree(int(c))
    return out


def threads(pids: list[int]) -> dict[tuple[int, int, str], tuple[float, int, int]]:
    """(pid, tid, role) -> (CPU seconds, voluntary, involuntary context switches)."""
    out = {}
    for p in pids:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/stat") as f:
                    s = f.read()
                fields = s[s.rindex(")") + 2 :].split()
                sw = {}
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            k, v = line.split(":")
                            sw[k] = int(v)
                name = s[s.index("(") + 1 : s.rindex(")")]
                role = "event loop" if int(t) == p else f"thread {name}"
                out[(p, int(t), role)] = (
                    (int(fields[11]) + int(fields[12])) / TCK,
                    sw.get("voluntary_ctxt_switches", 0),
                    sw.get("nonvoluntary_ctxt_switches", 0),
                )
        except FileNotFoundError:
            pass
    return out


def machine() -> dict[str, int]:
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return {"user": v[0] + v[1], "system": v[2], "idle": v[3] + v[4], "softirq": v[6]}


def load(name: str, urls: list[str], seconds: int) -> dict[str, float]:
    """Workload NAME's load generator run; with two URLs, one generator thread on each with
    half the connections, both at once: req/s summed, the higher p50 and p99."""
    if len(urls) == 1:
        return bench_http.drive(urls[0], LUA[name], seconds)
    half = bench_http.CONNECTIONS // len(urls)
    with ThreadPoolExecutor(len(urls)) as ex:
        runs = list(ex.map(lambda u: bench_http.drive(u, LUA[name], seconds, 1, half), urls))
    return {
        "rps": sum(r["rps"] for r in runs),
        "p50": max(r["p50"] for r in runs),
        "p99": max(r["p99"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
    }


def metrics(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = re.match(r"(fastactor_commit_batches_total|fastactor_commits_total)\{.*\} (\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def all_metrics(ports: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in ports:
        for k, v in metrics(p).items():
            out[k] = out.get(k, 0.0) + v
    return out


def measure(name: str, urls: list[str], pids: list[int], seconds: int, admin: list[int]) -> str:
    t0, m0, s0 = threads(pids), all_metrics(admin), machine()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    res = load(name, urls, seconds)
    dt = time.time() - start
    t1, m1, s1 = threads(pids), all_metrics(admin), machine()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = max(1.0, res["rps"] * seconds)
    roles: dict[str, list[float]] = {}
    for k, (cpu, vol, inv) in t1.items():
        c0, v0, i0 = t0.get(k, (0.0, 0, 0))
        acc = roles.setdefault(k[2], [0.0, 0.0, 0.0])
        acc[0] += cpu - c0
        acc[1] += vol - v0
        acc[2] += inv - i0
    lines = [f"{name}: {res['rps']:,.0f} req/s, p50 {res['p50']:.2f} ms, p99 {res['p99']:.2f} ms"]
    lines.append("| who | cores | µs CPU per request | context switches per request |")
    lines.append("|---|---:|---:|---:|")
    total = [0.0, 0.0, 0.0]
    for role, (used, slept, preempted) in sorted(roles.items(), key=lambda x: -x[1][0]):
        if used < 0.01:
            continue
        total = [total[0] + used, total[1] + slept, total[2] + preempted]
        lines.append(
            f"| {role} | {used / dt:.2f} | {used / n * 1e6:.1f} | "
            f"{slept / n:.2f} voluntary, {preempted / n:.2f} involuntary |"
        )
    lines.append(
        f"| server, all threads | {total[0] / dt:.2f} | {total[0] / n * 1e6:.1f} | "
        f"{total[1] / n:.2f} voluntary, {total[2] / n:.2f} involuntary |"
    )
    wrk_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    lines.append(f"| load generator | {wrk_cpu / dt:.2f} | {wrk_cpu / n * 1e6:.1f} | |")
    busy = {k: (s1[k] - s0[k]) / TCK / dt for k in s0}
    summary = "machine (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
    if m0 and m1:
        records = m1["fastactor_commits_total"] - m0["fastactor_commits_total"]
        batches = m1["fastactor_commit_batches_total"] - m0["fastactor_commit_batches_total"]
        summary += f"; {records / max(1.0, batches):.1f} records per fdatasync"
    lines.append(summary)
    return "\n".join(lines)


def main(argv: list[str]) -> str:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    workers = "2"
    if "--workers" in argv:
        i = argv.index("--workers")
        workers = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    seconds = int(argv[0]) if argv else 5
    names = argv[1:] or list(LUA)
    for w in names:
        if w not in LUA:
            raise SystemExit(f"cpu_http: unknown workload {w!r} (one of {', '.join(LUA)})")
    port = 18000 + os.getpid() % 20000
    root = bench_http.ROOT
    data = tempfile.mkdtemp(
        prefix="fastactor-cpu-http-",
        dir=root / ".bench-data" if (root / ".bench-data").is_dir() else None,
    )
    out = [
        f"host: nproc={os.cpu_count()}, {bench_http.generator()} -d{seconds}s, "
        f"fastactor serve examples/account --workers {workers} {' '.join(extra)}".rstrip()
    ]
    procs: list[subprocess.Popen[str]] = []
    try:
        triv = bench_http.start_trivial(port + 1)
        procs.append(triv)
        floor = bench_http.start_trivial(port + 3, Path(data) / "floor")
        procs.append(floor)
        srv = bench_http.start_serve(
            port, int(workers), Path(data), "--admin-port", str(port + 2), *extra
        )
        procs.append(srv)
        pair = []
        if "pair" in names:  # ports port+4, port+5; admin ports port+6, port+7
            for i in range(2):
                pair.append(
                    bench_http.start_serve(
                        port + 4 + i,
                        1,
                        Path(data) / f"pair-{i}",
                        "--admin-port",
                        str(port + 6 + i),
                        *extra,
                    )
                )
                procs.append(pair[-1])
        for p in [srv, *pair]:
            bench_http.wait_serving(p)
        for p in [port] + [port + 4 + i for i in range(len(pair))]:
            bench_http.drive(f"http://127.0.0.1:{p}/", bench_http.DEPOSIT_LUA, 2, threads=1)
        for w in names:
            if w in ("trivial", "floor"):
                p, ref = (port + 1, triv) if w == "trivial" else (port + 3, floor)
                out.append(measure(w, [f"http://127.0.0.1:{p}/"], tree(ref.pid), seconds, []))
            elif w == "pair":
                urls = [f"http://127.0.0.1:{port + 4 + i}/" for i in range(2)]
                pids = tree(pair[0].pid) + tree(pair[1].pid)
                out.append(measure(w, urls, pids, seconds, [port + 6, port + 7]))
            else:
                out.append(
                    measure(w, [f"http://127.0.0.1:{port}/"], tree(srv.pid), seconds, [port + 2])
                )
    finally:
        bench_http.stop(procs)
        shutil.rmtree(data, ignore_errors=True)
    return "\n\n".join(out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
