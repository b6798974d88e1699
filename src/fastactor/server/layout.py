"""Where a served data directory keeps its shards, and how instances move when the number
of workers changes.

Every instance belongs to one of PARTITIONS fixed partitions, by a stable hash of its
account, type and name; partition p is served by worker ``p % workers``. A worker keeps all
its partitions in one shard directory (one log, one snapshot), so all its writes share one
group commit.

Serving a data directory with another ``--workers`` moves partitions between shards, at start,
before any worker runs: every old shard is recovered and checkpointed (its whole state is then
in its snapshot), the rows are copied by their new owner into a new generation of shard
directories, and ``layout.json`` is switched to that generation with one atomic replace: the
commit point. A crash before it leaves the old generation in force, after it the new one; the
generation not in force is removed at the next start.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._core import PARTITIONS, Shard, crc32c, write_file_atomic

__all__ = ["PARTITIONS", "Layout", "owner_of", "partition_of", "prepare", "read_layout"]

_COPY_BATCH = 10_000


def partition_of(account: str, type_: str, name: str) -> int:
    return crc32c(f"{account}\0{type_}\0{name}".encode()) % PARTITIONS


def owner_of(account: str, type_: str, name: str, workers: int) -> int:
    """The worker that serves an instance."""
    return partition_of(account, type_, name) % workers


def _owner_of_key(inst: str, workers: int) -> int:
    """The owner of a stored instance key: "Type\\0name", or "account/Type\\0name" for types
    of accounts other than "default" (as the workers name their namespaces)."""
    type_part, _, name = inst.partition("\0")
    account, _, type_ = type_part.rpartition("/")
    return owner_of(account or "default", type_, name, workers)


@dataclass(frozen=True)
class Layout:
    workers: int
    partitions: int
    generation: int

    def base(self, data: Path) -> Path:
        return data if self.generation == 0 else data / f"gen-{self.generation}"

    def shard_dirs(self, data: Path) -> list[Path]:
        return [self.base(data) / f"shard-{i}" for i in range(self.workers)]


def read_layout(data: Path) -> Layout | None:
    """The layout in force, or None for a directory never served."""
    path = data / "layout.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: can not be read ({e})") from None
    try:
        # A directory from before fixed partitions: instance i lived on crc % workers.
        lay = Layout(int(d["workers"]), int(d.get("partitions", 0)), int(d.get("generation", 0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(f"{path}: not a fastactor layout: {d!r}") from None
    if lay.workers < 1 or lay.generation < 0:
        raise ValueError(f"{path}: not a fastactor layout: {d!r}")
    return lay


def _write_layout(data: Path, lay: Layout) -> None:
    body = {"workers": lay.workers, "partitions": lay.partitions, "generation": lay.generation}
    write_file_atomic(data / "layout.json", json.dumps(body).encode())


def prepare(
    data: Path, workers: int, on_move: Callable[[Layout, Layout], None] | None = None
) -> Layout:
    """The layout to serve DATA with WORKERS workers: the one in force, or a new one after
    moving the partitions (see the module's docstring). Clears away a generation an
    interrupted move left behind."""
    data.mkdir(parents=True, exist_ok=True)
    lay = read_layout(data)
    if lay is None:
        lay = Layout(workers, PARTITIONS, 0)
        _write_layout(data, lay)
        return lay
    _remove_stale(data, lay)
    if lay.workers == workers and lay.partitions == PARTITIONS:
        return lay
    new = Layout(workers, PARTITIONS, lay.generation + 1)
    if on_move is not None:
        on_move(lay, new)
    try:
        _move(data, lay, new)
    except BaseException:
        shutil.rmtree(new.base(data), ignore_errors=True)
        raise
    _remove_stale(data, new)
    return new


def _remove_stale(data: Path, lay: Layout) -> None:
    keep = lay.base(data)
    for p in data.glob("gen-*"):
        if p.is_dir() and p != keep:
            shutil.rmtree(p)
    if lay.generation:
        for p in data.glob("shard-*"):
            if p.is_dir():
                shutil.rmtree(p)


async def _settle(dirs: list[Path]) -> None:
    """Opens each shard (recovering its log into memory) and closes it (checkpointing all of
    it into the snapshot); a directory that does not exist yet is made empty."""
    for d in dirs:
        shard = Shard(str(d), None)
        shard.open()
        await shard.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move(data: Path, old: Layout, new: Layout) -> None:
    old_dirs = [d for d in old.shard_dirs(data) if d.exists()]
    new_dirs = new.shard_dirs(data)
    new.base(data).mkdir()
    asyncio.run(_settle(old_dirs + new_dirs))
    targets: list[sqlite3.Connection] = []
    try:
        for d in new_dirs:
            db = sqlite3.connect(d / "state.sqlite3", isolation_level=None)
            targets.append(db)
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
        for d in old_dirs:
            src = sqlite3.connect(f"file:{d / 'state.sqlite3'}?mode=ro", uri=True)
            try:
                batches: list[list[tuple[str, str, bytes]]] = [[] for _ in new_dirs]
                for row in src.execute("SELECT inst, key, value FROM kv"):
                    owner = _owner_of_key(row[0], new.workers)
                    batch = batches[owner]
                    batch.append(row)
                    if len(batch) >= _COPY_BATCH:
                        targets[owner].executemany("INSERT INTO kv VALUES (?, ?, ?)", batch)
                        batch.clear()
                for db, batch in zip(targets, batches, strict=True):
                    if batch:
                        db.executemany("INSERT INTO kv VALUES (?, ?, ?)", batch)
            finally:
                src.close()
        for db in targets:
            db.execute("COMMIT")
    finally:
        for db in targets:
            db.close()
    for d in new_dirs:
        _fsync_dir(d)
    _fsync_dir(new.base(data))
    _write_layout(data, new)  # the commit point
