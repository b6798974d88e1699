"""What a data directory stores, read without stopping the server: each shard's snapshot
(SQLite, read-only) plus the tail of its log (read without the writer's lock).

Instances stream out one at a time, in (type, name) order, so that a directory of millions of
instances is listed in constant memory: only the log's tail (what the last checkpoint has not
taken into the snapshot, bounded by the checkpoint size) is held whole. The snapshot is read a
chunk of rows per short read transaction, so a listing left waiting on its reader holds
nothing of the server's open. Each instance is shown as of one moment (a snapshot and the
log's tail past it); later instances may be shown as of later moments."""

from __future__ import annotations

import bisect
import heapq
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ._core import (
    LogReader,
    check_snapshot,
    decode_value,
    snapshot_error,
    snapshot_meta,
    snapshot_value,
)
from .errors import CodecError, LogCorruptionError
from .server.layout import read_layout

__all__ = ["check_shard", "shards", "stored_instances", "stored_state"]

# The snapshot's rows name an instance "<type>\0<name>" (types of other accounts than
# "default" read "account/Type"); SQLite compares text as UTF-8 bytes, which is code point
# order, so its rows come in (type, name) order.
_SEP = "\0"


def shards(data: Path) -> list[Path]:
    """The shard directories of the data directory DATA, each a snapshot and a log."""
    layout = read_layout(data)
    if layout is not None:  # served by `fastactor serve`
        return [d for d in layout.shard_dirs(data) if d.is_dir()]
    return [data] if (data / "state.sqlite3").exists() else []  # a Runtime's own directory


def _tail(shard: Path, start: int, wanted: Any) -> dict[str, tuple[bool, dict[str, Any]]]:
    """The log's records from LSN START on, folded per instance: whether its state was
    cleared first, and the keys put (bytes) or deleted (None) since; instances WANTED refuses
    are skipped."""
    tail: dict[str, tuple[bool, dict[str, Any]]] = {}
    if not (shard / "log").is_dir():
        return tail
    decode = msgspec.msgpack.Decoder().decode
    for _, _, payload in LogReader(shard / "log", start):
        inst, cleared, puts = decode(payload)
        if not wanted(inst):
            continue
        if cleared or inst not in tail:
            tail[inst] = (bool(cleared), dict(puts))
        else:
            tail[inst][1].update(puts)
    return tail


def _shard_instances(
    shard: Path, type_name: str | None, names: list[str] | None, values: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(inst, key -> encoded value, or None without VALUES) of SHARD's instances that have a
    key, in inst order."""
    snap = None
    try:
        snap = _Snapshot(shard, values)
        if names is not None:
            insts = sorted({f"{type_name}{_SEP}{n}" for n in names})
            snap.wanted = set(insts).__contains__
            chunks = snap.chunks_of(insts)
        elif type_name is not None:
            lo, hi = type_name + _SEP, type_name + "\x01"
            snap.wanted = lambda inst: lo <= inst < hi
            chunks = snap.chunks_in(lo, hi)
        else:
            chunks = snap.chunks_in("", None)
        after = None
        for groups, upto in chunks:
            yield from snap.merge(groups, after, upto)
            after = upto
    except (sqlite3.Error, UnicodeDecodeError) as e:  # not a database, a damaged page
        path = shard / "state.sqlite3"
        raise LogCorruptionError(f"{path}: the snapshot is damaged ({e})") from None
    finally:
        if snap is not None:
            snap.db.close()


# Snapshot rows read in one read transaction. The transaction ends before they are handed
# on, so that a reader that stops (`fastactor actors inspect T | less`) holds no snapshot of
# the server's SQLite file open: one held open keeps SQLite from checkpointing its own WAL
# file, which then grows for as long as the reader waits (120 MB in 20 s of writes).
_CHUNK_ROWS = 1024
_Group = tuple[str, list[tuple[str, str, Any]]]


class _Snapshot:
    """One shard's snapshot, read a chunk of instances at a time, each chunk in a read
    transaction of its own together with the log's tail that goes with it."""

    __slots__ = (
        "shard",
        "path",
        "values",
        "select",
        "wanted",
        "applied",
        "sealed",
        "tail",
        "tail_insts",
        "db",
    )

    def __init__(self, shard: Path, values: bool) -> None:
        self.shard = shard
        self.path = str(shard / "state.sqlite3")
        self.values = values
        self.select = f"SELECT inst, key, {'value' if values else 'NULL'} FROM kv"
        self.wanted: Any = lambda inst: True
        self.applied: int | None = None
        self.sealed = False
        self.tail: dict[str, tuple[bool, dict[str, Any]]] = {}
        self.tail_insts: list[str] = []
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        # A start that crashed before it made the tables leaves a file without them, which
        # the next start reads as empty, and so does check: so here too, through empty
        # tables of the connection's own (temp) schema, where SQLite looks first.
        try:
            names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
            for table, columns in (("kv", "inst, key, value"), ("meta", "k, v")):
                if table not in names:
                    self.db.execute(f"CREATE TEMP TABLE {table} ({columns})")
        except BaseException:  # not a database: the caller never gets it to close
            self.db.close()
            raise

    def _applied(self) -> int:
        return snapshot_meta(self.path, self.db)[0]

    def begin(self) -> None:
        """Opens a read transaction, with the log's tail past its snapshot in self.tail."""
        while True:
            self.db.execute("BEGIN")
            applied, fmt = snapshot_meta(self.path, self.db)
            self.sealed = fmt is not None
            if applied == self.applied:
                return
            try:
                self.tail = _tail(self.shard, applied + 1, self.wanted)
            except (OSError, ValueError, LogCorruptionError):
                # The server may have checkpointed meanwhile and removed that part of the log:
                # then a newer snapshot holds it, and the next transaction reads that one.
                self.db.execute("COMMIT")
                if self._applied() == applied:
                    raise
                continue
            self.applied = applied
            self.tail_insts = sorted(self.tail)
            return

    def chunks_in(self, lo: str, hi: str | None) -> Iterator[tuple[list[_Group], str | None]]:
        """The rows of instances LO <= inst < HI (no HI: to the end), by instance: each
        chunk's groups and the last instance it covers (None for the last chunk)."""
        bound, op = lo, ">="
        query = f"{self.select} WHERE inst {{}} ?{'' if hi is None else ' AND inst < ?'}"
        query += " ORDER BY inst, key"
        while True:
            self.begin()
            groups: list[_Group] = []
            rows, more = 0, False
            cur = self.db.execute(query.format(op), (bound,) if hi is None else (bound, hi))
            try:
                for row in cur:
                    if not groups or row[0] != groups[-1][0]:
                        if rows >= _CHUNK_ROWS:
                            more = True  # that instance starts the next chunk
                            break
                        groups.append((row[0], []))
                    groups[-1][1].append(row)
                    rows += 1
            finally:
                cur.close()
                self.db.execute("COMMIT")
            if not more:
                yield groups, None
                return
            bound, op = groups[-1][0], ">"
            yield groups, bound

    def chunks_of(self, insts: list[str]) -> Iterator[tuple[list[_Group], str | None]]:
        """As chunks_in, for the instances INSTS (sorted) only."""
        query = f"{self.select} WHERE inst = ? ORDER BY key"
        i = 0
        while True:
            self.begin()
            groups: list[_Group] = []
            rows = 0
            try:
                while i < len(insts) and rows < _CHUNK_ROWS:
                    found = self.db.execute(query, (insts[i],)).fetchall()
                    if found:
                        groups.append((insts[i], found))
                        rows += len(found)
                    i += 1
            finally:
                self.db.execute("COMMIT")
            if i == len(insts):
                yield groups, None
                return
            yield groups, insts[i - 1]

    def merge(
        self, groups: list[_Group], after: str | None, upto: str | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The instances of GROUPS and those only in the tail with AFTER < inst <= UPTO (no
        AFTER: from the start, no UPTO: to the end), with the tail folded in, in order."""
        lo = 0 if after is None else bisect.bisect_right(self.tail_insts, after)
        hi = len(self.tail_insts) if upto is None else bisect.bisect_right(self.tail_insts, upto)
        only_tail = iter(self.tail_insts[lo:hi])
        next_tail = next(only_tail, None)
        for inst, rows in groups:
            while next_tail is not None and next_tail < inst:
                yield from self._state(next_tail, {})
                next_tail = next(only_tail, None)
            if self.values and self.sealed:  # values carry a checksum (none if never served)
                state = {key: snapshot_value(self.path, inst, key, v) for _, key, v in rows}
            else:
                state = {key: v for _, key, v in rows}
            if next_tail == inst:
                next_tail = next(only_tail, None)
            yield from self._state(inst, state)
        while next_tail is not None:
            yield from self._state(next_tail, {})
            next_tail = next(only_tail, None)

    def _state(self, inst: str, state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        change = self.tail.get(inst)
        if change is not None:
            state = _fold(state, change)
        if state:
            yield inst, state


def _fold(state: dict[str, Any], change: tuple[bool, dict[str, Any]]) -> dict[str, Any]:
    cleared, puts = change
    if cleared:
        state = {}
    for k, v in puts.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    return state


def stored_instances(
    data: str | Path,
    type_name: str | None = None,
    names: Iterable[str] | None = None,
    values: bool = True,
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yields (type, name, key -> value) for each instance that stores a key, in (type, name)
    order, keys in order: of TYPE_NAME only if given, and of those only the NAMES given.
    Without VALUES nothing is read or decoded but the keys (each maps to None). A damaged
    value, a snapshot SQLite can not read or a damaged log raise LogCorruptionError naming
    the file."""
    wanted = None if names is None else sorted(set(names))
    if wanted is not None and type_name is None:
        raise ValueError("names need a type")
    streams = [_shard_instances(s, type_name, wanted, values) for s in shards(Path(data))]
    for inst, state in heapq.merge(*streams, key=lambda item: item[0]):
        t, _, name = inst.partition(_SEP)
        if values:
            yield t, name, {k: decode_value(v) for k, v in sorted(state.items())}
        else:
            yield t, name, dict.fromkeys(sorted(state))


def stored_state(data: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Maps (type, instance name) to its keys and decoded values, all at once (for small
    directories and tests; stored_instances streams)."""
    return {(t, name): state for t, name, state in stored_instances(data)}


def check_shard(shard: Path) -> tuple[int, int, int]:
    """Checks SHARD as a whole, read-only, as the start of a server on it would and more:
    its snapshot's pages, each stored value's checksum and that it decodes, then each log
    record past the snapshot (its CRC, and that it and its values decode). A server may be
    writing it meanwhile. Returns (the snapshot's applied LSN, its rows, the log's records
    past it); LogCorruptionError naming the file for the first damage found, OSError for
    what can not be read."""
    path = shard / "state.sqlite3"
    while True:
        applied = rows = 0
        db = None
        try:
            if path.exists():
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
                db.execute("BEGIN")  # one moment of the file: its rows and its applied LSN
                applied, rows = check_snapshot(str(path), db)
                db.execute("COMMIT")
            try:
                records, last = _check_log(shard / "log", applied + 1)
            except (OSError, ValueError, LogCorruptionError) as e:
                # As in _Snapshot.begin: a checkpoint meanwhile may have removed the part of
                # the log after this snapshot; then a newer snapshot holds it.
                if db is not None and snapshot_meta(str(path), db)[0] != applied:
                    continue
                if isinstance(e, ValueError):  # the log starts past the snapshot's LSN
                    raise LogCorruptionError(
                        f"{e}: records after the snapshot's LSN {applied} are missing"
                    ) from None
                raise
            if last < applied:  # as a start refuses it
                raise LogCorruptionError(
                    f"{shard / 'log'}: the log ends at LSN {last} but the snapshot already "
                    f"holds LSN {applied}: the log directory was replaced or truncated"
                )
            return applied, rows, records
        except sqlite3.Error as e:  # not a database, a damaged page
            raise snapshot_error(str(path), e) from None
        finally:
            if db is not None:
                db.close()


def _check_log(log: Path, start: int) -> tuple[int, int]:
    """How many records the log in LOG holds from LSN START on, each checked as above, and
    the LSN of its last record (0: none)."""
    if not log.is_dir():
        return 0, 0
    decode = msgspec.msgpack.Decoder().decode
    n = 0
    reader = LogReader(log, start)
    for lsn, _, payload in reader:
        try:
            inst, _, puts = decode(payload)
            for v in puts.values():
                if v is not None:
                    decode_value(v)
        except (msgspec.DecodeError, CodecError, TypeError, ValueError, AttributeError) as e:
            raise LogCorruptionError(
                f"{log}: the record of LSN {lsn} does not decode ({e})"
            ) from None
        n += 1
    return n, max(reader.next_lsn - 1, 0)
