"""The in-process runtime: actors, their storage and the output gate in one event loop.

    async with fastactor.Runtime("data", actors=[Account]) as rt:
        alice = rt.namespace("Account").id_from_name("alice")
        await alice.deposit(100)

``fastactor serve`` runs one of these per shard process; tests and embedding programs use it
directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from . import _core
from .actor import StatefulActor, check_seconds

__all__ = ["Env", "Runtime"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Env:
    """``env``: one attribute per binding (an ActorNamespace), plus any extra values."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Env({', '.join(sorted(self.__dict__))})"


def _check_type_name(name: str) -> None:
    if not _IDENT.match(name) or "__" in name or len(name) > 32:
        raise ValueError(
            f"actor type {name!r} must be an identifier without '__', at most 32 characters"
        )


def _check_options(seconds: Mapping[str, Any], counts: Mapping[str, tuple[Any, int, int]]) -> None:
    """TypeError or ValueError naming the first option that is not valid: SECONDS must be
    finite numbers > 0, COUNTS (name -> (value, lowest, highest)) integers in their range."""
    for name, v in seconds.items():
        check_seconds(f"Runtime: {name}", v)
    for name, (v, lo, hi) in counts.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"Runtime: {name} must be an int, not {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"Runtime: {name} must be between {lo} and {hi}, not {v!r}")


class Runtime:
    """Owns one data directory (a write-ahead log plus a snapshot) and the instances of the
    given actor classes. Use it as an async context manager on one event loop.

    ``group_delay_us``: under sustained load (batches of 16 records or more) the log lets the
    next batch gather for up to this long while records keep arriving, trading a little
    latency for fewer ``fdatasync`` calls and so more CPU for the turns (+12 to 17 % turns/s
    in ``benchmarks/bench_dispatch.py`` on 2 cores); 0 turns it off.

    ``group_window_us``: once a record waits, the log holds its batch open this long (or
    until ``group_window_records`` records wait; after a batch of fewer than 16, until a
    quarter of it passes with no new record) before writing it. Where the CPU is the limit
    each ``fdatasync`` costs CPU the requests need; ``fastactor serve`` uses 400 µs and 16
    records (``--commit-window-us``, ``--commit-window-records``). 0, the default here,
    writes at once.

    ``max_resident``: instances kept in memory at most. Past it the least recently used of
    those between turns are evicted (down to nine tenths of it) before ``idle_timeout``
    would; their state stays on disk and reloads on the next call. 0: no bound.

    ``max_cache_bytes``: the memory resident instances' caches of stored values hold, at
    most (each entry its key and encoded value and about 110 bytes besides). Past it the
    least recently used instances caching values that can go are evicted the same way, down
    to nine tenths of it. 0: no bound.

    An option of the wrong type or out of its range is a TypeError or ValueError naming it,
    raised here: the budgets are finite numbers of seconds > 0."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        actors: Iterable[type[StatefulActor]] | Mapping[str, type[StatefulActor]],
        *,
        env: Mapping[str, Any] | None = None,
        idle_timeout: float = 60.0,
        method_timeout: float = 30.0,
        fetch_timeout: float = 30.0,
        block_timeout: float = 30.0,
        checkpoint_interval: float = 30.0,
        checkpoint_bytes: int = 64 << 20,
        group_delay_us: int = 250,
        group_window_us: int = 0,
        group_window_records: int = 16,
        alarm_timeout: float = 900.0,
        max_resident: int = 100_000,
        max_cache_bytes: int = 256 << 20,
    ) -> None:
        _check_options(
            {
                "idle_timeout": idle_timeout,
                "method_timeout": method_timeout,
                "fetch_timeout": fetch_timeout,
                "block_timeout": block_timeout,
                "checkpoint_interval": checkpoint_interval,
                "alarm_timeout": alarm_timeout,
            },
            {
                "checkpoint_bytes": (checkpoint_bytes, 1, 1 << 62),
                "group_delay_us": (group_delay_us, 0, 1_000_000),
                "group_window_us": (group_window_us, 0, 1_000_000),
                "group_window_records": (group_window_records, 1, 1_000_000),
                "max_resident": (max_resident, 0, 1 << 62),
                "max_cache_bytes": (max_cache_bytes, 0, 1 << 62),
            },
        )
        bindings = (
            dict(actors)
            if isinstance(actors, Mapping)
            else {cls.__name__.upper(): cls for cls in actors}
        )
        self._classes: dict[str, type[StatefulActor]] = {}
        for binding, cls in bindings.items():
            if not (isinstance(cls, type) and issubclass(cls, StatefulActor)):
                raise TypeError(f"{binding}: {cls!r} is not a StatefulActor subclass")
            if not _IDENT.match(binding) or "__" in binding or binding == "SECRETS":
                raise ValueError(f"binding {binding!r} must be an identifier without '__'")
            _check_type_name(cls.__name__)
            if self._classes.get(cls.__name__, cls) is not cls:
                raise ValueError(f"two different classes are named {cls.__name__}")
            self._classes[cls.__name__] = cls
        for name in bindings:
            if env and name in env:
                raise ValueError(f"env value {name!r} clashes with an actor binding")
        self._bindings = bindings
        self._extra = dict(env or {})
        self.data_dir = os.fspath(data_dir)
        self._opts: dict[str, Any] = {
            "idle_timeout": idle_timeout,
            "method_timeout": method_timeout,
            "fetch_timeout": fetch_timeout,
            "block_timeout": block_timeout,
            "checkpoint_interval": checkpoint_interval,
            "checkpoint_bytes": checkpoint_bytes,
            "group_delay_us": group_delay_us,
            "group_window_us": group_window_us,
            "group_window_records": group_window_records,
            "alarm_timeout": alarm_timeout,
            "max_resident": max_resident,
            "max_cache_bytes": max_cache_bytes,
        }
        self._shard: _core.Shard | None = None
        self._namespaces: dict[str, _core.ActorNamespace] = {}
        self.env = Env({})

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Opens the data directory: the snapshot, then the log's tail (replayed into
        memory). Instances stay on disk until called."""
        if self._shard is not None:
            raise RuntimeError("the runtime is already started")
        shard = _core.Shard(self.data_dir, self.env, **self._opts)
        shard.open()
        try:
            for type_name, cls in self._classes.items():
                self._namespaces[type_name] = shard.namespace(type_name, cls)
        except BaseException:
            # A class refused (bad settings): close what opened, so that the directory is
            # free for the next start (its log's lock, the flusher thread, the snapshot).
            self._namespaces.clear()
            shard.abandon()
            raise
        self._shard = shard
        values = dict(self._extra)
        for binding, cls in self._bindings.items():
            values[binding] = self._namespaces[cls.__name__]
        self.env.__dict__.update(values)

    def namespace(self, type_name: str) -> _core.ActorNamespace:
        """The ActorNamespace of the actor type called TYPE_NAME."""
        try:
            return self._namespaces[type_name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            raise KeyError(f"no actor type {type_name!r} (known: {known})") from None

    @property
    def shard(self) -> _core.Shard:
        if self._shard is None:
            raise RuntimeError("the runtime is not started")
        return self._shard

    async def checkpoint(self) -> int:
        """Writes committed state into the snapshot now; returns log segments removed."""
        removed: int = await self.shard.checkpoint()
        return removed

    def evict_idle(self) -> int:
        """Evicts every instance that is between turns now (as the idle timer would);
        returns how many. Their state stays on disk and reloads on the next call."""
        n: int = self.shard.evict_idle()
        return n

    def stats(self) -> dict[str, int]:
        s = self.shard
        return {
            **s.stats,
            "resident": s.resident,
            "durable_lsn": s.wal.durable_lsn,
            "last_lsn": s.wal.last_lsn,
        }

    async def close(self) -> None:
        """Lets running turns end, waits until every reply is durable, checkpoints, and
        closes the log and the snapshot."""
        if self._shard is not None:
            await self._shard.close()

    def _abandon(self) -> None:
        if self._shard is not None:
            self._shard.abandon()
