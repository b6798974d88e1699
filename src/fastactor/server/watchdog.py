"""The supervisor's watch on its workers' event loops.

Each worker counts in its own region of a small file both map (``DATA/run/heartbeat``), from
a loop callback every BEAT_S. The supervisor reads the counts at every tick of its own loop.
A count that has not moved for STALLED_S means that the worker's event loop is not running (a
fetch, method or alarm that blocks without awaiting: ``time.sleep``, an endless loop, a
synchronous client) while its connections and instances wait: readiness answers 503. One that
has not moved for ``--stall-timeout`` gets the worker's Python stacks written to stderr
(faulthandler, on SIGUSR1) and the worker killed, to be restarted and recover its partition
from its log, as after a crash: every write it acknowledged is on disk, and what it
had not acknowledged was never promised.

A worker also notes in its region the alarm a step of which it is running. If that is what
held the loop, the restarted worker counts the run as failed (Shard.alarm_stalled): an alarm
that always blocks is retried as its class says, then deleted, instead of stalling its worker
again after every restart. An instance key too long for the region is noted by its
digest and as much of it as fits (see alarm_ref), which the restarted worker matches against
its pending alarms.

A stall is timed by the supervisor's clock only while the supervisor itself runs: a tick that
comes late (the whole host paused, or the supervisor waiting on a restarting worker) starts
every count afresh, so a pause of the machine is never taken for a stalled loop."""

from __future__ import annotations

import asyncio
import faulthandler
import hashlib
import mmap
import os
import signal
import struct
from collections.abc import Iterable

__all__ = ["BEAT_S", "STALLED_S", "Heartbeat", "Watch", "alarm_ref", "describe_ref", "resolve_ref"]

BEAT_S = 0.25  # a worker's loop counts this often
STALLED_S = 2.0  # a loop that has not counted for this long is stalled (readiness 503)
LATE_TICK_S = 1.0  # a supervisor tick this late starts every count afresh
STACKS_SIGNAL = signal.SIGUSR1  # a worker writes its Python stacks to stderr on it
HURRY_SIGNAL = signal.SIGUSR2  # a draining worker stops what still runs at once on it
# Each worker's region of the file: its count, then the alarm a step of which runs now (the
# length of its alarm_ref, 0 for none, its retries so far, the alarm_ref).
REGION = 4096
_HEAD = struct.Struct("=QII")
_COUNT = struct.Struct("=Q")
_ALARM = struct.Struct("=II")
KEY_MAX = REGION - _HEAD.size
# An instance key never starts with NUL ("<type>\0<name>", the type an identifier), so a
# region holding a NUL, 64 hex digits, and a cut key names a key too long to keep whole.
_DIGEST = 64


def _digest(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=_DIGEST // 2).hexdigest()


def alarm_ref(key: str) -> bytes:
    """What the region keeps of instance KEY: the key in UTF-8, or past KEY_MAX bytes a NUL,
    its digest and the key cut (at a character) to fit."""
    b = key.encode("utf-8", "surrogatepass")
    if len(b) <= KEY_MAX:
        return b
    n = KEY_MAX - 1 - _DIGEST
    while b[n] & 0xC0 == 0x80:  # not inside a character
        n -= 1
    return b"\0" + _digest(b).encode("ascii") + b[:n]


def describe_ref(ref: str) -> tuple[str, str]:
    """(type, name) to print for REF, a cut name ending in "..."."""
    if ref.startswith("\0"):
        type_name, _, name = ref[1 + _DIGEST :].partition("\0")
        return type_name, name + "..."
    type_name, _, name = ref.partition("\0")
    return type_name, name


def resolve_ref(ref: str, keys: Iterable[str]) -> str | None:
    """The instance key REF names, among KEYS (a cut key is matched by its digest)."""
    if not ref.startswith("\0"):
        return ref
    digest, cut = ref[1 : 1 + _DIGEST], ref[1 + _DIGEST :]
    for key in keys:
        if key.startswith(cut) and _digest(key.encode("utf-8", "surrogatepass")) == digest:
            return key
    return None


def _map(fd: int) -> mmap.mmap:
    return mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


class Watch:
    """The supervisor's side: makes the file with a zeroed region per worker, says how long
    each worker's loop has gone without counting, and which alarm it was running."""

    def __init__(self, path: str, workers: int, now: float) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, REGION * workers)
            self._map = _map(fd)
        finally:
            os.close(fd)
        self._last: list[int | None] = [None] * workers
        self._since = [now] * workers
        self._tick = now

    def restarted(self, i: int, now: float) -> None:
        """Worker I is a new process, ready now: its stall counts from now."""
        self._last[i] = None
        self._since[i] = now

    def stalls(self, now: float) -> list[float]:
        """Seconds each worker's loop has gone without counting, as of NOW."""
        late = now - self._tick > LATE_TICK_S
        self._tick = now
        out = []
        for i, last in enumerate(self._last):
            (count,) = _COUNT.unpack_from(self._map, i * REGION)
            if late or count != last:
                self._last[i] = count
                self._since[i] = now
            out.append(now - self._since[i])
        return out

    def running_alarm(self, i: int) -> tuple[str, int] | None:
        """(instance key or its alarm_ref, retries) of the alarm whose step worker I was
        running, if it was: read once the worker is gone."""
        n, retries = _ALARM.unpack_from(self._map, i * REGION + _COUNT.size)
        if not 0 < n <= KEY_MAX:
            return None
        start = i * REGION + _HEAD.size
        return self._map[start : start + n].decode("utf-8", "surrogatepass"), retries

    def close(self) -> None:
        self._map.close()


class Heartbeat:
    """The worker's side: its region of PATH, cleared; start() counts in it every BEAT_S
    while the running loop runs, and has SIGUSR1 write this process's Python stacks to
    stderr; alarm_step is the shard's alarm_step_hook."""

    def __init__(self, path: str, me: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = _map(fd)
        finally:
            os.close(fd)
        self._at = me * REGION
        _ALARM.pack_into(self._map, self._at + _COUNT.size, 0, 0)
        self._count = 0

    def start(self) -> None:
        faulthandler.register(STACKS_SIGNAL, all_threads=True)
        loop = asyncio.get_running_loop()

        def beat() -> None:
            self._count += 1
            _COUNT.pack_into(self._map, self._at, self._count)
            loop.call_later(BEAT_S, beat)

        beat()

    def alarm_step(self, key: str | None, retries: int) -> None:
        """A step of the alarm of instance KEY (after RETRIES retries) starts; KEY None: it
        ended."""
        at = self._at + _COUNT.size
        if key is None:
            _ALARM.pack_into(self._map, at, 0, 0)
            return
        b = alarm_ref(key)
        start = self._at + _HEAD.size
        self._map[start : start + len(b)] = b
        _ALARM.pack_into(self._map, at, len(b), retries)
