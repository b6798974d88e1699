"""One shard worker of ``fastactor serve``: its own uvloop loop, its own data directory (log
and snapshot) holding its hash partition of the instances, an HTTP listener per function
(SO_REUSEPORT, shared with the other workers) and a Unix socket for calls from the others.

Talks to the supervisor over stdin/stdout: prints "ready" once it accepts requests and
"drained" once SIGTERM has stopped it accepting and its requests have finished. Once every
worker has drained the supervisor writes "quiesce": the worker starts no more alarm runs,
waits for the turns still running (an alarm's, a call's whose request timed out) and prints
"idle", answering calls from the others all along, for those turns may call it. What still
runs --shutdown-timeout seconds after the SIGTERM (or at once on HURRY_SIGNAL, which the
supervisor sends on a second SIGTERM) is stopped (Shard.stop_turns). It exits when
the supervisor closes its stdin, once every worker is idle. A supervisor that dies without a
word (kill -9) closes the stdin too: the worker then drains and exits on its own, rather than
serve on unsupervised.

A worker whose log failed (an fdatasync or write error: every write from then on fails with
ActorOutputGateError) stops accepting, answers what is running, and exits with code
LOG_FAILED; the supervisor starts it again, and it recovers its partition from the log, the
way an operator's restart would."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import shlex
import signal
import sys
from collections.abc import Callable, Hashable
from typing import Any

import uvloop

from .._core import Shard
from ..errors import FastactorError, LogCorruptionError
from ..manifest import load_function, resolve
from ..runtime import Env
from .http import (
    CONNECTIONS,
    FrontStats,
    HttpProtocol,
    Limits,
    base_url,
    bodies_held,
    connection_cap,
)
from .ipc import Channel, RoutedNamespace, channel_stats, serve_calls
from .watchdog import HURRY_SIGNAL, Heartbeat, resolve_ref

log = logging.getLogger("fastactor.worker")
LOG_FAILED = 3  # the exit code of a worker whose log failed
LEAVE_GRACE = 2.0  # seconds the tasks still there at exit get to end once cancelled


def tell(line: str) -> None:
    """LINE to the supervisor, which may be gone (its end of the pipe closed)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


TIDY_S = 10.0  # a worker idle this long, after it did something, gives memory back


def _malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), which gives the C heap's free pages back to the system; a
    no-op on a C library without it."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()


def resident_bytes() -> int:
    """This process's resident memory (Linux's /proc/self/statm); 0 where that is not
    known."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


GROWN = 16 << 20  # what a worker must hold past its start before it gives memory back


def give_back_if_grown(start: int, rss: Callable[[], int] = resident_bytes) -> bool:
    """A full garbage collection, then malloc_trim, if the process holds GROWN more than
    START (its resident bytes once ready; 0: unknown, always): after a burst over many
    names, not after a load that left it as it was. Both cost the next burst a little (free
    lists to fill again, pages to fault back in): a few per cent of the next 6 s of load in
    an A/B of back-to-back runs (BENCHMARKS.md, round 21). Whether it ran."""
    now = rss()
    if start and now and now < start + GROWN:
        return False
    gc.collect()
    _TRIM()
    return True


async def tidy_when_idle(
    activity: Callable[[], Hashable], give_back: Callable[[], object], every: float = TIDY_S
) -> None:
    """Runs GIVE_BACK (give_back_if_grown) once the worker has been idle for a period of
    EVERY seconds (ACTIVITY(), its counters, unchanged across it) after something happened:
    once when a load stops, once more when its instances are evicted.

    Why: a worker that served a burst over many names stayed at 60 to 75 MiB once idle,
    against 33 MiB fresh (BENCHMARKS.md, rounds 19 to 21). Objects the burst left in the
    collector's oldest generation and in CPython's free lists keep the allocator's arenas,
    and an idle process never runs a full collection. A collection costs about 1 ms per
    2,000 objects (160 ms with 100,000 instances resident), so it runs only when idle, and
    only once per quiet spell."""
    seen = tidied = activity()
    while True:
        await asyncio.sleep(every)
        now = activity()
        if now == seen and now != tidied:
            give_back()
            tidied = now
        seen = now


def socket_path(sockets: str, i: int) -> str:
    """Worker I's call socket in SOCKETS (the supervisor's cfg["sockets"], see cli.py)."""
    return os.path.join(sockets, f"worker-{i}.sock")


async def serve(cfg: dict[str, Any]) -> None:
    me, workers = cfg["index"], cfg["workers"]
    functions = [load_function(d) for d in cfg["dirs"]]
    owners = resolve(functions)
    loop = asyncio.get_running_loop()
    shard = Shard(
        cfg["shards"][me],
        Env({}),
        group_window_us=cfg.get("commit_window_us", 0),
        group_window_records=cfg.get("commit_window_records", 16),
        max_resident=cfg.get("max_resident", 100_000),
        max_cache_bytes=cfg.get("max_cache_bytes", 0),
    )
    try:
        shard.open()
    except LogCorruptionError as e:  # damaged (it says where): what else is?
        raise SystemExit(
            f"fastactor: worker {me}: {e}\nfastactor: `fastactor actors check --data "
            f"{shlex.quote(str(cfg['data']))}` checks every shard whole, read-only"
        ) from None
    except (OSError, FastactorError) as e:  # in use, unreadable
        raise SystemExit(f"fastactor: worker {me}: {e}") from None
    channel = Channel([socket_path(cfg["sockets"], i) for i in range(workers)])
    local = {
        f"{acct}/{t}": shard.namespace(t if acct == "default" else f"{acct}/{t}", cls)
        for (acct, t), cls in owners.items()
    }
    envs = []
    for fn in functions:
        envs.append(
            Env(
                {
                    b.binding: RoutedNamespace(
                        local[f"{fn.account}/{b.type}"], fn.account, b.type, me, workers, channel
                    )
                    for b in fn.actors
                }
            )
        )
    # An actor's env is its owning function's.
    for fn, env in zip(functions, envs, strict=True):
        for t in fn.owned:
            local[f"{fn.account}/{t}"].env = env
    heartbeat = Heartbeat(cfg["heartbeat"], me) if cfg.get("heartbeat") else None
    if heartbeat is not None:
        shard.alarm_step_hook = heartbeat.alarm_step
    if cfg.get("stalled_alarm"):
        ref, retries = cfg["stalled_alarm"]
        why = "it held the worker's event loop for --stall-timeout: the worker was restarted"
        key = resolve_ref(ref, shard.alarm_keys())
        if key is not None:  # None: its alarm is gone
            shard.alarm_stalled(key, retries, why)
    sock = socket_path(cfg["sockets"], me)
    if os.path.exists(sock):
        os.unlink(sock)
    conns: set[HttpProtocol] = set()
    counters = {"requests": 0}
    # Each function's responses and request durations, labelled by its name (names are
    # unique per account; another account's is prefixed with it).
    labels = [
        fn.name if fn.account == "default" else f"{fn.account}/{fn.name}" for fn in functions
    ]
    front_stats = {label: FrontStats() for label in labels}

    def stats() -> dict[str, Any]:
        """This worker's counters, for the supervisor's /metrics (ipc.ask_stats)."""
        wal: dict[str, Any] = shard.wal.stats()
        wal["flush_us"] = [[str(k), v] for k, v in wal["flush_us"].items()]
        return {
            **shard.stats,
            "resident": shard.resident,
            **counters,
            "wal": wal,
            "connections": len(conns),
            "body_bytes": bodies_held(),
            "channel": channel_stats(),
            "http": {name: st.snapshot() for name, st in front_stats.items()},
        }

    ipc_server = await serve_calls(sock, local, stats)
    given = cfg.get("limits", {})
    limits = Limits(
        **{k: v for k, v in given.items() if k != "connections"},
        connections=connection_cap(given.get("connections", CONNECTIONS)),
    )
    servers = []
    for i, (fn, env, label) in enumerate(zip(functions, envs, labels, strict=True)):
        port = fn.port or cfg["port"] + i
        base = base_url(cfg["host"], port)

        def factory(
            fn: Any = fn, env: Any = env, base: str = base, st: FrontStats = front_stats[label]
        ) -> HttpProtocol:
            return HttpProtocol(fn.fetch, env, limits, base, conns, counters, st)

        try:
            servers.append(
                await loop.create_server(factory, cfg["host"], port, reuse_port=True, backlog=1024)
            )
        except OSError as e:
            raise SystemExit(
                f"fastactor: {fn.name}: cannot listen on {cfg['host']}:{port}: {e.strerror}"
            ) from None
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # When what still runs is stopped: --shutdown-timeout after the SIGTERM, or at once on
    # HURRY_SIGNAL (the supervisor's, on a second SIGTERM or Ctrl-C).
    deadline = [math.inf]

    def hurry() -> None:
        deadline[0] = loop.time()
        stop.set()

    loop.add_signal_handler(HURRY_SIGNAL, hurry)
    # The supervisor writes "quiesce" on stdin once all have drained, and closes it once all
    # are idle (or by dying).
    closed = asyncio.Event()
    quiesce = asyncio.Event()

    def supervisor_said() -> None:
        said = os.read(sys.stdin.fileno(), 4096)
        if not said:
            loop.remove_reader(sys.stdin.fileno())
            closed.set()
            quiesce.set()
            stop.set()
        elif b"quiesce" in said:
            quiesce.set()

    loop.add_reader(sys.stdin.fileno(), supervisor_said)

    failed: list[BaseException] = []

    async def watch_log() -> None:
        while not stop.is_set():
            err = shard.wal.failed
            if err is not None:
                log.error("worker %d: its log failed (%s): restarting it to recover", me, err)
                failed.append(err)
                stop.set()
                return
            await asyncio.sleep(0.1)

    watch_task = loop.create_task(watch_log())
    start_rss = resident_bytes()
    tidy_task = loop.create_task(
        tidy_when_idle(
            lambda: (counters["requests"], shard.stats["turns"], shard.resident, len(conns)),
            lambda: give_back_if_grown(start_rss),
        )
    )
    if heartbeat is not None:
        heartbeat.start()
    tell("ready")
    await stop.wait()
    deadline[0] = min(deadline[0], loop.time() + cfg.get("shutdown_timeout", 90.0))
    watch_task.cancel()
    tidy_task.cancel()
    # Drain: stop accepting, let running requests finish, close idle connections.
    for s in servers:
        s.close()
    while any(c.pending() for c in conns) and loop.time() < deadline[0]:
        await asyncio.sleep(0.01)
    late = [c for c in conns if c.pending()]
    if late:
        log.warning(
            "worker %d: %d requests still running at the --shutdown-timeout deadline: "
            "answering them 503",
            me,
            len(late),
        )
        for c in late:
            c.give_up()
        # Their fetches end at their next await; one whose code catches the cancellation is
        # answered without it a second later (HttpConnection._left_behind).
        for _ in range(150):
            if not any(c.pending() for c in late):
                break
            await asyncio.sleep(0.01)
    for c in list(conns):
        c.shut()
    if failed:
        # Not a drain of the whole server: go now, for the supervisor to start this again.
        ipc_server.close()
        channel.close()
        try:
            await shard.close()
        except (OSError, FastactorError):
            pass  # the log failed: what is durable is what recovery finds
        _remove(sock)
        raise SystemExit(LOG_FAILED)
    tell("drained")
    # Keep answering the other workers until the supervisor says all have drained, then
    # until the turns still running here and there have ended: they may call each other.
    await quiesce.wait()
    if not closed.is_set():
        await settle(shard, me, deadline, closed)
        tell("idle")
    await closed.wait()
    # Without a supervisor (it died), the turns still running get until the deadline too.
    await settle(shard, me, deadline, None)
    ipc_server.close()
    channel.close()
    await shard.close()
    _remove(sock)


async def settle(
    shard: Shard, me: int, deadline: list[float], closed: asyncio.Event | None
) -> None:
    """Starts no more alarm runs and waits for the turns still running (and the calls queued
    behind them) to end, until DEADLINE[0] (loop time, which may move nearer meanwhile) or
    until CLOSED is set; at the deadline, stops those still running."""
    loop = asyncio.get_running_loop()
    shard.hold_alarms()
    while shard.busy() and loop.time() < deadline[0]:
        if closed is not None and closed.is_set():
            return
        await asyncio.sleep(0.01)
    if not shard.busy():
        return
    n = shard.stop_turns()
    log.warning(
        "worker %d: stopped %d turns still running at the --shutdown-timeout deadline (their "
        "writes are dropped; an alarm stays stored for the next start)",
        me,
        n,
    )
    # Their tasks end at their next await; one whose code catches the cancellation is let
    # go after a few seconds (the shard's STUCK_GRACE, 5 s).
    for _ in range(700):
        if not shard.busy():
            break
        await asyncio.sleep(0.01)


def _remove(sock: str) -> None:
    """Removes this worker's call socket, if closing its server has not already (asyncio and
    uvloop do on Python 3.13)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)


def main() -> None:
    # Until serve() handles it: a signal that comes during start-up must not kill the worker.
    signal.signal(HURRY_SIGNAL, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cfg = json.loads(sys.argv[1])
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(cfg))
    finally:
        leave(loop)


def leave(loop: asyncio.AbstractEventLoop) -> None:
    """Cancels the tasks still there and closes LOOP, as asyncio.run does, but waits for
    those tasks LEAVE_GRACE seconds at most: a task whose code catches its cancellation and
    goes on (a fetch or a turn left behind) must not keep the worker from exiting."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=LEAVE_GRACE))
        left = [t for t in tasks if not t.done()]
        if left:
            log.warning(
                "%d tasks still ran at exit, %g s after they were cancelled (does their "
                "code catch CancelledError?): left behind, e.g. %r",
                len(left),
                LEAVE_GRACE,
                left[0],
            )
    loop.run_until_complete(loop.shutdown_asyncgens())
    # Threads of asyncio.to_thread: the same bound (one still running keeps the process
    # until it ends, as in any Python program).
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), LEAVE_GRACE))
    loop.close()


if __name__ == "__main__":
    main()
