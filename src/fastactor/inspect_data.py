"""What a data directory stores, read without stopping the server: each shard's snapshot
(SQLite, read-only) plus the tail of its log (read without the writer's lock).

Instances stream out one at a time, in (type, name) order, so that a directory of millions of
instances is listed in constant memory: only the log's tail (what the last checkpoint has not
taken into the snapshot, bounded by the checkpoint size) is held whole."""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ._core import LogReader, decode_value, snapshot_value
from .errors import LogCorruptionError
from .server.layout import read_layout

__all__ = ["stored_instances", "stored_state"]

# The snapshot's rows name an instance "<type>\0<name>" (types of other accounts than
# "default" read "account/Type"); SQLite compares text as UTF-8 bytes, which is code point
# order, so its rows come in (type, name) order.
_SEP = "\0"


def _shards(data: Path) -> list[Path]:
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
    path = str(shard / "state.sqlite3")
    try:
        yield from _snapshot_instances(path, shard, type_name, names, values)
    except sqlite3.Error as e:  # not a database, a missing file, a damaged page
        raise LogCorruptionError(f"{path}: the snapshot is damaged ({e})") from None


def _snapshot_instances(
    path: str, shard: Path, type_name: str | None, names: list[str] | None, values: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")  # the meta row and the rows of one snapshot
        row = db.execute("SELECT v FROM meta WHERE k = 'applied_lsn'").fetchone()
        applied = row[0] if row else 0
        sealed = db.execute("SELECT v FROM meta WHERE k = 'format'").fetchone() is not None
        column = "value" if values else "NULL"
        select = f"SELECT inst, key, {column} FROM kv"
        if names is not None:
            wanted_insts = {f"{type_name}{_SEP}{n}" for n in names}
            queries: Iterable[tuple[str, tuple[str, ...]]] = [
                (f"{select} WHERE inst = ? ORDER BY key", (inst,)) for inst in sorted(wanted_insts)
            ]
            tail = _tail(shard, applied + 1, wanted_insts.__contains__)
        elif type_name is not None:
            lo, hi = type_name + _SEP, type_name + "\x01"
            queries = [(f"{select} WHERE inst >= ? AND inst < ? ORDER BY inst, key", (lo, hi))]
            tail = _tail(shard, applied + 1, lambda inst: lo <= inst < hi)
        else:
            queries = [(f"{select} ORDER BY inst, key", ())]
            tail = _tail(shard, applied + 1, lambda inst: True)
        rows = itertools.chain.from_iterable(db.execute(q, p) for q, p in queries)
        only_in_tail = iter(sorted(tail))
        next_tail = next(only_in_tail, None)
        for inst, group in itertools.groupby(rows, key=lambda r: r[0]):
            while next_tail is not None and next_tail < inst:
                state = _fold({}, tail[next_tail])
                if state:
                    yield next_tail, state
                next_tail = next(only_in_tail, None)
            if values and sealed:  # values carry a checksum (a snapshot serve never opened: none)
                state = {key: snapshot_value(path, inst, key, v) for _, key, v in group}
            else:
                state = {key: v for _, key, v in group}
            if next_tail == inst:
                state = _fold(state, tail[inst])
                next_tail = next(only_in_tail, None)
            if state:
                yield inst, state
        while next_tail is not None:
            state = _fold({}, tail[next_tail])
            if state:
                yield next_tail, state
            next_tail = next(only_in_tail, None)
    finally:
        db.close()


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
    streams = [_shard_instances(s, type_name, wanted, values) for s in _shards(Path(data))]
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
