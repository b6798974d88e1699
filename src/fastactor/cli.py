"""The ``fastactor`` command line (SPEC §7)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import FastactorError
from .manifest import ManifestError, load_function, resolve
from .server.http import BODY_MEMORY, CONNECTIONS, base_url, connection_cap
from .server.layout import Layout, prepare
from .server.watchdog import HURRY_SIGNAL, STACKS_SIGNAL, STALLED_S, Watch, describe_ref

__all__ = ["main"]


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gib": 1 << 30}  # fmt: skip
MAX_BODY_LIMIT = 512 << 20  # a forwarded request crosses between workers in one frame


def _size(text: str, most: int = MAX_BODY_LIMIT) -> int:
    """BYTES, or a number of KiB, MiB or GiB ("10MiB", "512k", "1.5M"), at most MOST."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or 64k, 10MiB, 1G)")
    n = int(float(m.group(1)) * unit)
    if not 0 <= n <= most:
        raise argparse.ArgumentTypeError(f"{text!r} is over {most >> 20} MiB")
    return n


CACHE_MEMORY = 256 << 20  # the values each worker's instances cache, by default


def _memory(text: str) -> int:
    return _size(text, 1 << 40)


def _ranged(parse: Callable[[str], Any], ok: Callable[[Any], bool], says: str) -> Any:
    """An argparse type: PARSE(text), refused with "'text' is not SAYS" unless OK of it."""

    def check(text: str) -> Any:
        try:
            v = parse(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not {says}")
        return v

    return check


_seconds = _ranged(float, lambda s: 0 < s <= 86_400, "a number of seconds (0 to 86400)")
_connections = _ranged(
    int, lambda n: 1 <= n <= 1_000_000, "a number of connections (1 to 1000000)"
)
_port = _ranged(int, lambda p: 1 <= p <= 65535, "a TCP port (1 to 65535)")


def usable_cpus(
    cpu_max: str = "/sys/fs/cgroup/cpu.max", cfs_dir: str = "/sys/fs/cgroup/cpu"
) -> int:
    """The CPUs serve may use, its default --workers: those of this process's affinity mask,
    at most the CPU quota of its cgroup, as a container started with --cpus has: cgroup v2's
    CPU_MAX ("QUOTA PERIOD" or "max PERIOD"), else cgroup v1's cpu.cfs_quota_us and
    cpu.cfs_period_us in CFS_DIR (a quota of -1: none). A 64-core host giving a container 2
    CPUs gets 2 workers, not 64."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform
        n = os.cpu_count() or 1
    quota = _cgroup_quota(cpu_max, cfs_dir)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def _cgroup_quota(cpu_max: str, cfs_dir: str) -> float | None:
    """The cgroup's CPU quota in CPUs (see usable_cpus), or None if it sets none we read."""
    try:
        with open(cpu_max) as f:
            text = f.read()
    except OSError:  # no cgroup v2 file here: try v1's
        pass
    else:
        try:
            quota, period = text.split()[:2]
            if quota != "max" and int(quota) > 0 and int(period) > 0:
                return int(quota) / int(period)
        except ValueError:  # not one we read
            pass
        return None
    try:
        with open(os.path.join(cfs_dir, "cpu.cfs_quota_us")) as f:
            v1_quota = int(f.read())
        with open(os.path.join(cfs_dir, "cpu.cfs_period_us")) as f:
            v1_period = int(f.read())
    except (OSError, ValueError):
        return None
    return v1_quota / v1_period if v1_quota > 0 and v1_period > 0 else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastactor", description="Stateful actors for Python.")
    p.add_argument("--version", action="version", version=f"fastactor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve function directories over HTTP")
    s.add_argument(
        "dirs",
        nargs="*",
        default=["."],
        metavar="DIR",
        help="function directories, each with a fastactor.toml (default: .)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument(
        "--port",
        type=_port,
        default=8787,
        help="function i listens on its manifest's port, else on PORT + i (default: 8787)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=usable_cpus(),
        help="shard processes, one per core (default: the CPUs this process may use)",
    )
    s.add_argument(
        "--data",
        default="./.fastactor",
        help="where the logs and stored state live (default: ./.fastactor)",
    )
    s.add_argument(
        "--admin-port",
        type=_port,
        default=None,
        help="serve /health/liveness, /health/readiness and /metrics here",
    )
    s.add_argument(
        "--commit-window-us",
        type=int,
        default=400,
        metavar="US",
        help="hold each log batch open up to this long (or until --commit-window-records "
        "records wait) before its fdatasync: fewer flushes, more CPU for requests; 0 flushes "
        "at once (default 400)",
    )
    s.add_argument(
        "--commit-window-records",
        type=int,
        default=16,
        metavar="N",
        help="end a held log batch once this many records wait (default 16)",
    )
    s.add_argument(
        "--max-body",
        type=_size,
        default=10 << 20,
        metavar="SIZE",
        help="a request body past this gets 413 (bytes, or 512k, 10MiB; default 10MiB)",
    )
    s.add_argument(
        "--max-body-memory",
        type=_memory,
        default=None,
        metavar="SIZE",
        help="the request bodies each worker holds at once, across its connections; a body "
        "over 64 KiB (or a head still arriving past 16 KiB) that would go past it gets 503 "
        "with Retry-After, a smaller one still arriving past a quarter more (at least "
        "--max-body; "
        f"default {BODY_MEMORY >> 20}MiB, or --max-body if larger)",
    )
    s.add_argument(
        "--fetch-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="a fetch still running after S seconds is answered 504 (default 30)",
    )
    s.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=75.0,
        metavar="S",
        help="close a keep-alive connection idle this long (default 75)",
    )
    s.add_argument(
        "--max-connections",
        type=_connections,
        default=CONNECTIONS,
        metavar="N",
        help=f"each worker answers 503 past N open connections (default {CONNECTIONS})",
    )
    s.add_argument(
        "--max-resident",
        type=int,
        default=100_000,
        metavar="N",
        help="each worker keeps at most N instances in memory, evicting the least recently "
        "used between their calls (their state stays on disk); 0: no bound (default 100000)",
    )
    s.add_argument(
        "--max-cache-memory",
        type=_memory,
        default=CACHE_MEMORY,
        metavar="SIZE",
        help="the memory each worker's instances' caches of stored values hold at most (each "
        "entry its key, its encoded value and about 110 bytes); "
        "past it the least recently used instances between their calls are evicted (their "
        f"state stays on disk); 0: no bound (default {CACHE_MEMORY >> 20}MiB)",
    )
    s.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="restart a worker whose event loop has not run for S seconds (a fetch, method or "
        "alarm that blocks without awaiting), after writing its stacks to stderr; it recovers "
        "from its log; 0: never (default 60)",
    )
    s.add_argument(
        "--shutdown-timeout",
        type=float,
        default=90.0,
        metavar="S",
        help="on SIGTERM or Ctrl-C, give requests and running turns up to S seconds in all "
        "to end; then stop the turns still running (their writes are dropped, an alarm stays "
        "stored for the next start), flush and exit 0; a second signal stops them at once "
        "(default 90)",
    )
    a = sub.add_parser("actors", help="what a data directory stores")
    a.add_argument(
        "what",
        choices=["list", "inspect", "instances", "check"],
        help="list: the types and how many instances each; instances TYPE: their names; "
        "inspect TYPE [NAME ...]: their storage as JSON lines; check: every shard's snapshot "
        "and log read whole and verified, as a server's start does (exit 1 on damage)",
    )
    a.add_argument("type", nargs="?", help="the actor type (inspect, instances)")
    a.add_argument(
        "names", nargs="*", metavar="NAME", help="inspect: only these instances (default: all)"
    )
    a.add_argument(
        "--data", default="./.fastactor", help="the data directory (default: ./.fastactor)"
    )
    n = sub.add_parser("new", help="scaffold a function directory that serves as is")
    n.add_argument("name", help="the function's name, and the directory made for it")
    n.add_argument("--actor", action="store_true", help="include an actor class and binding")
    return p


_PLAIN_APP = '''"""{name}: a fastactor function. Serve it with `fastactor serve {name}`."""

from fastactor import Request, Response


async def fetch(request: Request, env) -> Response:
    return Response.json({{"function": "{name}", "path": request.path}})
'''

_ACTOR_APP = '''"""{name}: a fastactor function with an actor; `fastactor serve {name}` serves it.

    POST /counters/<name>   adds 1 and answers the new value
    GET  /counters/<name>   answers the value (HEAD too; another method is a 405)
"""

from urllib.parse import unquote

from fastactor import Request, Response, StatefulActor


class Counter(StatefulActor):
    async def increment(self) -> int:
        value = (await self.ctx.storage.get("value") or 0) + 1
        await self.ctx.storage.put("value", value)
        return value

    async def get(self) -> int:
        return await self.ctx.storage.get("value") or 0


async def fetch(request: Request, env) -> Response:
    parts = request.path.strip("/").split("/")
    if len(parts) != 2 or parts[0] != "counters" or not parts[1]:
        return Response.json({{"error": "not found"}}, status=404)
    try:
        # The path keeps the client's %-escapes: /counters/zo%C3%AB is "zoë".
        counter = env.COUNTER.id_from_name(unquote(parts[1], errors="strict"))
    except ValueError as e:  # not UTF-8 (a UnicodeDecodeError), or over 2048 bytes
        return Response.json({{"error": f"bad counter name: {{str(e)[:200]}}"}}, status=400)
    if request.method == "POST":
        return Response.json({{"counter": counter.id, "value": await counter.increment()}})
    if request.method in ("GET", "HEAD"):
        return Response.json({{"counter": counter.id, "value": await counter.get()}})
    allow = {{"allow": "GET, HEAD, POST"}}
    return Response.json({{"error": "method not allowed"}}, status=405, headers=allow)
'''


def new(args: argparse.Namespace) -> int:
    name = args.name
    if not re.fullmatch(r"[a-z0-9-]+", name):
        print(f"fastactor: function names are [a-z0-9-]+, not {name!r}", file=sys.stderr)
        return 2
    d = Path(name)
    if d.exists() and any(d.iterdir()):
        print(f"fastactor: {d} already exists and is not empty", file=sys.stderr)
        return 2
    d.mkdir(parents=True, exist_ok=True)
    toml = f'name = "{name}"\nmain = "app.py"\n'
    if args.actor:
        toml += '\n[[actors]]\nbinding = "COUNTER"\ntype = "Counter"\n'
    (d / "fastactor.toml").write_text(toml)
    (d / "app.py").write_text((_ACTOR_APP if args.actor else _PLAIN_APP).format(name=name))
    print(f"created {d}/fastactor.toml and {d}/app.py; run: fastactor serve {name}")
    return 0


class Supervisor:
    """Starts one worker process per shard, prints the functions' addresses once every
    worker accepts requests, restarts a worker that dies, and drains them all on SIGTERM."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.procs: list[subprocess.Popen[str]] = []
        self.stopping = False
        self.ready = False
        self.restarts = [0] * cfg["workers"]  # per worker, for /metrics
        # Per worker: the alarm (instance key, retries) that held its loop when it was killed
        # for stalling, for its next process to count as failed.
        self.stalled_alarms: dict[int, tuple[str, int]] = {}
        self.stalls = [0.0] * cfg["workers"]  # seconds each worker's loop has not run
        self.deadline = 0.0  # (monotonic) when the drain stops the turns still running

    def spawn(self, i: int) -> subprocess.Popen[str]:
        cfg = dict(self.cfg, index=i, stalled_alarm=self.stalled_alarms.pop(i, None))
        return subprocess.Popen(
            [sys.executable, "-m", "fastactor.server.worker", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_line(self, p: subprocess.Popen[str], want: str, timeout: float) -> bool:
        assert p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.1)
            if r:
                line = p.stdout.readline()
                if not line:
                    return False
                if line.strip() == want:
                    return True
            elif p.poll() is not None:
                return False
        return False

    def run(self, functions: list[Any]) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        watch = Watch(self.cfg["heartbeat"], self.cfg["workers"], time.monotonic())
        self.procs = [self.spawn(i) for i in range(self.cfg["workers"])]
        for i, p in enumerate(self.procs):
            if not self.wait_line(p, "ready", 120):
                print(f"fastactor: worker {i} failed to start", file=sys.stderr)
                self._kill_all()
                watch.close()
                return 1
        self.ready = True
        host = self.cfg["host"]
        for i, fn in enumerate(functions):
            print(f"{fn.name} → {base_url(host, fn.port or self.cfg['port'] + i)}", flush=True)
        if self.cfg.get("admin_port") is not None:
            # No arrow: "NAME → URL" lines are the functions (scripts read them).
            url = base_url(host, self.cfg["admin_port"])
            print(f"admin: {url}/health/readiness, {url}/metrics", flush=True)
        n = len(self.procs)
        self._started = [time.monotonic()] * n
        self._quick = [0] * n  # restarts in a row that died within a minute
        # Per worker: None while it runs; ("wait", when) before it is started again, and
        # ("start", deadline) while the new process recovers. No worker's restart holds up
        # the watch on the others, nor the drain.
        self._pending: list[tuple[str, float] | None] = [None] * n
        self._watch = watch
        while not self.stopping:
            now = time.monotonic()
            self.stalls = watch.stalls(now)
            for i in range(n):
                self._tend(i, now)
            self.ready = not any(self._pending) and all(p.poll() is None for p in self.procs)
            time.sleep(0.05)
        watch.close()
        return self._drain()

    def _tend(self, i: int, now: float) -> None:
        """One tick of worker I: kill it if its loop stalled too long, notice that it exited
        and start it again (after a delay if it keeps dying), or see that it is ready."""
        p, state = self.procs[i], self._pending[i]
        if state is None:
            if self._stalled_too_long(i, p):
                alarm = self._watch.running_alarm(i)
                if alarm is not None:
                    type_name, name = describe_ref(alarm[0])
                    print(
                        f"fastactor: worker {i} was running the alarm of {type_name} "
                        f"{name!r}: that run counts as failed",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.stalled_alarms[i] = alarm
            if p.poll() is None:
                return
            # A worker that keeps dying (a failing disk, say) is started again less and less
            # often, up to every 10 s, rather than in a tight loop.
            self._quick[i] = self._quick[i] + 1 if now - self._started[i] < 60 else 0
            delay = min(10.0, 0.1 * 2 ** self._quick[i]) if self._quick[i] > 1 else 0.0
            print(
                f"fastactor: worker {i} exited ({p.returncode}); restarting"
                + (f" in {delay:g} s" if delay else ""),
                file=sys.stderr,
                flush=True,
            )
            self._pending[i] = ("wait", now + delay)
        elif state[0] == "wait":
            if now >= state[1]:
                self._started[i] = now
                self.restarts[i] += 1
                self.procs[i] = self.spawn(i)
                self._pending[i] = ("start", now + 120)
        else:
            said = self._said(p, "ready")
            if said is None and now < state[1]:
                return
            if not said:
                print(f"fastactor: worker {i} failed to restart", file=sys.stderr, flush=True)
            self._pending[i] = None  # running (or, if it died, restarted at the next tick)
            self._watch.restarted(i, now)

    def _said(self, p: subprocess.Popen[str], want: str) -> bool | None:
        """True if worker P has printed the line WANT, False if it exited first, None if
        neither yet (without waiting)."""
        assert p.stdout is not None
        while select.select([p.stdout], [], [], 0)[0]:
            line = p.stdout.readline()
            if not line:
                return False
            if line.strip() == want:
                return True
        return None

    def unready(self) -> str | None:
        """Why /health/readiness says 503, or None: every worker is up, its event loop
        running (none stalled STALLED_S or more), and no drain has begun."""
        if self.stopping:
            return "draining"
        if not self.ready:
            return "starting"
        for i, stalled in enumerate(self.stalls):
            if stalled >= STALLED_S:
                return f"worker {i}'s event loop has not run for {stalled:.1f} s"
        return None

    def _stalled_too_long(self, i: int, p: subprocess.Popen[str]) -> bool:
        """Kills worker I (process P) if its event loop has not run for --stall-timeout, after
        asking it for its Python stacks (written to stderr): the caller restarts it."""
        limit = self.cfg.get("stall_timeout", 0)
        if not limit or self.stalls[i] < limit or p.poll() is not None:
            return False
        print(
            f"fastactor: worker {i}'s event loop has not run for {self.stalls[i]:.0f} s (a fetch, "
            "method or alarm that blocks without awaiting?): killing it to restart it; its "
            "Python stacks follow",
            file=sys.stderr,
            flush=True,
        )
        try:
            p.send_signal(STACKS_SIGNAL)
            time.sleep(0.2)  # faulthandler writes from the signal handler itself
            p.kill()
            p.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass  # already gone, or stuck in the kernel: the exit is seen on a later tick
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.deadline = time.monotonic() + self.cfg.get("shutdown_timeout", 90.0)
            self.stopping = True
            return
        # Again: what still runs is stopped now (each worker, on HURRY_SIGNAL).
        self.deadline = min(self.deadline, time.monotonic())
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, HURRY_SIGNAL)

    def _drain(self) -> int:
        """Each worker stops accepting and finishes its requests, then (once all have) the
        turns still running, stopping those left at the --shutdown-timeout deadline (the
        worker keeps its own, from the same SIGTERM); then they close. The waits here allow a
        few seconds past the deadline for that, and kill a worker that is still there."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

        def left(grace: float) -> float:
            return max(0.0, self.deadline + grace - time.monotonic())

        for p in self.procs:
            self.wait_line(p, "drained", left(5))
        for p in self.procs:  # every worker has drained: let the turns still running end
            with contextlib.suppress(OSError, ValueError):
                if p.stdin is not None:
                    p.stdin.write("quiesce\n")
                    p.stdin.flush()
        for p in self.procs:
            self.wait_line(p, "idle", left(15))
        for p in self.procs:  # every worker is idle: let them close
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        rc = 0
        for p, state in zip(self.procs, self._pending, strict=True):
            try:
                code = p.wait(max(60.0, left(30)))  # its checkpoint may take a while
            except subprocess.TimeoutExpired:
                p.kill()
                code = 1
            if state is None:  # one that was being restarted had served nothing: its
                rc = rc or code  # end (SIGTERM before its handler was set) is no failure
        return rc

    def _kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why nothing can listen on HOST:PORT, or None. The workers share their ports
    (SO_REUSEPORT), which would let a second server on the same port join them unnoticed and
    take half the requests; a bind without SO_REUSEPORT fails while anything listens."""
    try:
        addrs = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return e.strerror
    for family, kind, proto, _, addr in addrs:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                return e.strerror
    return None


def _lock_data(data: str) -> int | None:
    """Holds DATA for this server (an flock on DATA/serve.lock, for the process's life): one
    server per data directory. None if another server holds it."""
    fd = os.open(os.path.join(data, "serve.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _open_files(want: int) -> int:
    """Raises this process's open files limit (its workers inherit it) toward WANT, as far as
    the hard limit lets; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return want
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return soft


# Each worker's configuration names every shard directory and travels in its command line
# (at most 128 KiB an argument on Linux): 512 workers keep that well under, with room for a
# long --data path.
MAX_WORKERS = 512


def serve(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"fastactor: --workers must be between 1 and {MAX_WORKERS} (one per core is the "
              f"design)", file=sys.stderr)  # fmt: skip
        return 2
    if not 0 <= args.commit_window_us <= 100_000:
        print("fastactor: --commit-window-us must be between 0 and 100000", file=sys.stderr)
        return 2
    if not 1 <= args.commit_window_records <= 1_000_000:
        print("fastactor: --commit-window-records must be between 1 and 1000000",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 0 <= args.max_resident <= 1 << 62:
        print("fastactor: --max-resident must be 0 (no bound) or a number of instances",
              file=sys.stderr)  # fmt: skip
        return 2
    if not (args.stall_timeout == 0 or 1 <= args.stall_timeout <= 86_400):
        print("fastactor: --stall-timeout must be 0 (never) or between 1 and 86400 seconds",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 0 <= args.shutdown_timeout <= 86_400:
        print("fastactor: --shutdown-timeout must be between 0 and 86400 seconds",
              file=sys.stderr)  # fmt: skip
        return 2
    body_memory = args.max_body_memory
    if body_memory is None:
        body_memory = max(BODY_MEMORY, args.max_body)
    elif body_memory < args.max_body:
        print(f"fastactor: --max-body-memory ({body_memory} bytes) must be at least --max-body "
              f"({args.max_body} bytes): a body the server takes must fit",
              file=sys.stderr)  # fmt: skip
        return 2
    dirs = [str(Path(d).resolve()) for d in args.dirs]
    try:
        functions = [load_function(d) for d in dirs]
        resolve(functions)
    except ManifestError as e:
        print(f"fastactor: {e}", file=sys.stderr)
        return 2
    ports: dict[int, Any] = {}
    for i, fn in enumerate(functions):
        port = fn.port or args.port + i
        if port in ports:
            print(
                f"fastactor: {fn.path}: function {fn.name!r} would listen on port {port}, "
                f"as {ports[port].name!r} ({ports[port].path}) does",
                file=sys.stderr,
            )
            return 2
        ports[port] = fn
        if port > 65535 or port == args.admin_port:
            print(
                f"fastactor: {fn.path}: function {fn.name!r} would listen on port {port}, "
                + ("not a TCP port" if port > 65535 else "the --admin-port"),
                file=sys.stderr,
            )
            return 2
        why = _cannot_listen(args.host, port)
        if why is not None:
            print(
                f"fastactor: {fn.name}: cannot listen on {args.host}:{port}: {why}",
                file=sys.stderr,
            )
            return 1
    data = str(Path(args.data).resolve())
    try:
        os.makedirs(os.path.join(data, "run"), exist_ok=True)
        lock = _lock_data(data)
    except OSError as e:
        print(f"fastactor: --data {data}: {e.strerror}", file=sys.stderr)
        return 2
    if lock is None:
        print(f"fastactor: {data} is in use by another fastactor serve", file=sys.stderr)
        return 1

    def moving(old: Layout, new: Layout) -> None:
        print(
            f"fastactor: {data}: moving instances from {old.workers} to {new.workers} shards",
            file=sys.stderr,
            flush=True,
        )

    try:
        layout = prepare(Path(data), args.workers, moving)
    except (ValueError, OSError, FastactorError) as e:
        print(f"fastactor: {e}", file=sys.stderr)
        return 2
    sockets = _socket_dir(data, args.workers)
    cfg = {
        "dirs": dirs,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "data": data,
        "sockets": sockets,
        "shards": [str(d) for d in layout.shard_dirs(Path(data))],
        "commit_window_us": args.commit_window_us,
        "commit_window_records": args.commit_window_records,
        "max_resident": args.max_resident,
        "max_cache_bytes": args.max_cache_memory,
        "admin_port": args.admin_port,
        "limits": {
            "body": args.max_body,
            "body_memory": body_memory,
            "fetch_timeout": args.fetch_timeout,
            "idle_timeout": args.idle_timeout,
            "connections": args.max_connections,
        },
        "heartbeat": os.path.join(data, "run", "heartbeat"),
        "stall_timeout": args.stall_timeout,
        "shutdown_timeout": args.shutdown_timeout,
    }
    conns = args.max_connections
    limit = _open_files(conns + 1024)
    if limit < conns + 1024:
        print(
            f"fastactor: the open files limit (ulimit -n) is {limit}: each worker takes "
            f"{connection_cap(conns)} connections, not {conns}, and answers 503 past that",
            file=sys.stderr,
        )
    sup = Supervisor(cfg)
    try:
        if args.admin_port is not None:
            from .server.admin import start_admin

            try:
                start_admin(sup, args.host, args.admin_port)
            except OSError as e:
                print(f"fastactor: --admin-port {args.admin_port}: {e.strerror}", file=sys.stderr)
                return 2
        return sup.run(functions)
    finally:
        if sockets != os.path.join(data, "run"):
            shutil.rmtree(sockets, ignore_errors=True)


# A Unix socket's path must fit sun_path: 108 bytes on Linux, 104 on macOS, the NUL included.
_SOCKET_PATH_MAX = 100


def _socket_dir(data: str, workers: int) -> str:
    """Where the workers' call sockets go: DATA/run, or, where that path is too long for a
    Unix socket, a private directory (mode 0700) in the temporary directory, removed when
    serve exits. Its name is fixed by DATA and the user, so one left by a serve that was
    killed is taken again rather than another made; one that is not this user's own private
    directory is left alone."""
    run = os.path.join(data, "run")
    if len(os.fsencode(os.path.join(run, f"worker-{workers - 1}.sock"))) <= _SOCKET_PATH_MAX:
        return run
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) > _SOCKET_PATH_MAX - 60:
        base = "/tmp"
    digest = hashlib.sha256(os.fsencode(data)).hexdigest()[:16]
    path = os.path.join(base, f"fastactor-{os.getuid()}-{digest}")
    try:
        os.mkdir(path, 0o700)
        return path
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
            return path
    return tempfile.mkdtemp(prefix="fastactor-", dir=base)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "new":
        return new(args)
    if args.command == "actors":
        return actors(args)
    return 2


def actors(args: argparse.Namespace) -> int:
    from ._core import STORAGE_ALARM_KEY
    from .errors import LogCorruptionError
    from .inspect_data import stored_instances

    data = Path(args.data)
    if not data.is_dir():
        print(f"fastactor: {data}: no such data directory", file=sys.stderr)
        return 2
    if args.what == "check":
        if args.type:
            print("fastactor: actors check takes no TYPE", file=sys.stderr)
            return 2
        return check(data)
    if args.what != "list" and not args.type:
        print(f"fastactor: actors {args.what} needs a TYPE", file=sys.stderr)
        return 2
    if args.names and args.what != "inspect":
        print("fastactor: only actors inspect takes instance names", file=sys.stderr)
        return 2
    shown = 0
    try:
        if args.what == "list":
            counts = collections.Counter(t for t, _, _ in stored_instances(data, values=False))
            for type_name in sorted(counts):
                n = counts[type_name]
                print(f"{type_name}\t{n} instance{'' if n == 1 else 's'}")
            sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
            return 0
        values = args.what == "inspect"
        for _, name, stored in stored_instances(data, args.type, args.names or None, values):
            shown += 1
            if not values:
                print(name)
                continue
            out: dict[str, Any] = {"id": name, "storage": stored}
            alarm = stored.pop(STORAGE_ALARM_KEY, None)
            if alarm is not None:
                out["alarm"] = alarm  # ms since the epoch
            print(json.dumps(_as_json(out)))
        if shown:
            sys.stdout.flush()
            return 0
        # A type of another account is stored as "account/Type": name the ones that match.
        types = {t for t, _, _ in stored_instances(data, values=False)}
        near = sorted({t for t in types if t.rpartition("/")[2] == args.type} - {args.type})
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (LogCorruptionError, OSError, ValueError) as e:
        print(f"fastactor: {e}", file=sys.stderr)
        return 1
    hint = f" (stored under another account: {', '.join(near)})" if near else ""
    which = f" named {', '.join(map(repr, args.names))}" if args.names else ""
    print(f"fastactor: no stored instances of {args.type}{which}{hint}", file=sys.stderr)
    return 1


def check(data: Path) -> int:
    """`fastactor actors check`: each shard of DATA checked whole (inspect_data.check_shard),
    one line each; exit 1 if any is damaged or can not be read."""
    from .errors import LogCorruptionError
    from .inspect_data import check_shard, shards

    found = shards(data)
    if not found:
        print(f"fastactor: {data}: no shards (not a data directory of fastactor)", file=sys.stderr)
        return 2
    bad = 0
    for shard in found:
        name = shard.relative_to(data) if shard != data else shard
        try:
            applied, rows, records = check_shard(shard)
        except (LogCorruptionError, OSError, ValueError) as e:
            print(f"{name}: DAMAGED: {e}", flush=True)
            bad += 1
            continue
        print(
            f"{name}: ok: snapshot of {rows:,} value{'' if rows == 1 else 's'} "
            f"through LSN {applied:,}, then {records:,} log record{'' if records == 1 else 's'}",
            flush=True,
        )
    if bad:
        print(f"fastactor: {bad} of {len(found)} shards damaged", file=sys.stderr)
        return 1
    return 0


def _as_json(v: Any) -> Any:
    """V as strict JSON can hold it: dicts (a key that is not a str as its repr), lists (and
    tuples), str, int, bool, None and finite floats as they are; anything else (bytes, sets,
    dates, NaN, ...) as its repr."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, dict):
        return {k if isinstance(k, str) else repr(k): _as_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_as_json(x) for x in v]
    return repr(v)


if __name__ == "__main__":
    sys.exit(main())
