"""The supervisor's watch on its workers' event loops.

Each worker counts in its own 8-byte slot of a small file both map (``DATA/run/heartbeat``),
from a loop callback every BEAT_S. The supervisor reads the slots at every tick of its own
loop. A count that has not moved for STALLED_S means that the worker's event loop is not
running (a fetch, method or alarm that blocks without awaiting: ``time.sleep``, an endless
loop, a synchronous client) while its connections and instances wait: readiness answers 503.
One that has not moved for ``--stall-timeout`` gets the worker's Python stacks written to
stderr (faulthandler, on SIGUSR1) and the worker killed, to be restarted and recover its
partition from its log, as after a crash: every write it acknowledged is on disk, and what it
had not acknowledged was never promised.

A stall is timed by the supervisor's clock only while the supervisor itself runs: a tick that
comes late (the whole host paused, or the supervisor waiting on a restarting worker) starts
every count afresh, so a pause of the machine is never taken for a stalled loop."""

from __future__ import annotations

import asyncio
import faulthandler
import mmap
import os
import signal
import struct

__all__ = ["BEAT_S", "STALLED_S", "Watch", "start_heartbeat"]

BEAT_S = 0.25  # a worker's loop counts this often
STALLED_S = 2.0  # a loop that has not counted for this long is stalled (readiness 503)
LATE_TICK_S = 1.0  # a supervisor tick this late starts every count afresh
STACKS_SIGNAL = signal.SIGUSR1  # a worker writes its Python stacks to stderr on it
_SLOT = struct.Struct("=Q")


def _map(fd: int) -> mmap.mmap:
    return mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


class Watch:
    """The supervisor's side: makes the file with a zeroed slot per worker, and says how long
    each worker's loop has gone without counting."""

    def __init__(self, path: str, workers: int, now: float) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _SLOT.size * workers)
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
            (count,) = _SLOT.unpack_from(self._map, i * _SLOT.size)
            if late or count != last:
                self._last[i] = count
                self._since[i] = now
            out.append(now - self._since[i])
        return out

    def close(self) -> None:
        self._map.close()


def start_heartbeat(path: str, me: int) -> None:
    """The worker's side: counts in slot ME of PATH every BEAT_S while the running loop runs,
    and has SIGUSR1 write this process's Python stacks to stderr."""
    fd = os.open(path, os.O_RDWR)
    try:
        slot = _map(fd)
    finally:
        os.close(fd)
    faulthandler.register(STACKS_SIGNAL, all_threads=True)
    loop = asyncio.get_running_loop()
    offset = me * _SLOT.size
    count = 0

    def beat() -> None:
        nonlocal count
        count += 1
        _SLOT.pack_into(slot, offset, count)
        loop.call_later(BEAT_S, beat)

    beat()
