"""Reading a data directory without its server: snapshot rows and the log's tail, merged."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from fastactor import StatefulActor, inspect_data
from fastactor._core import encode_value, snapshot_row_value
from fastactor.errors import LogCorruptionError
from fastactor.inspect_data import stored_instances, stored_state
from fastactor.runtime import Runtime
from fastactor.testing import RuntimeFactory, crash


class Box(StatefulActor):
    async def put(self, entries: dict[str, Any]) -> None:
        await self.ctx.storage.put(entries)

    async def drop(self, keys: list[str]) -> None:
        await self.ctx.storage.delete(keys)

    async def clear(self, then: dict[str, Any]) -> None:
        await self.ctx.storage.delete_all()
        if then:
            await self.ctx.storage.put(then)


class Bag(Box):
    pass


@pytest.mark.parametrize("chunk_rows", [1, 2, 1024])
def test_snapshot_and_log_tail_merge_into_each_instances_state(
    actor_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    # The snapshot is read a few rows per read transaction: the merge must hold across the
    # chunks' edges as well as inside one.
    monkeypatch.setattr(inspect_data, "_CHUNK_ROWS", chunk_rows)
    # What each instance stores, as the runtime would answer: the model the reader must match.
    model: dict[tuple[str, str], dict[str, Any]] = {}

    async def step(rt: Runtime, t: str, name: str, method: str, arg: Any) -> None:
        await getattr(rt.namespace(t).id_from_name(name), method)(arg)
        state = model.setdefault((t, name), {})
        if method == "put":
            state.update(arg)
        elif method == "drop":
            for k in arg:
                state.pop(k, None)
        else:
            state.clear()
            state.update(arg)

    async def go() -> None:
        # Checkpointed into the snapshot: a clean stop.
        async with actor_runtime(Box, Bag) as rt:
            for i in range(6):
                await step(rt, "Box", f"b{i}", "put", {"a": i, "b": [i, str(i)]})
            await step(rt, "Bag", "g", "put", {"z": {1, 2}})
        # Then only in the log: changed, emptied, cleared, new, and emptied-then-refilled
        # instances, left by a crash that checkpoints nothing.
        rt = actor_runtime(Box, Bag)
        await rt.start()
        await step(rt, "Box", "b1", "put", {"a": 100, "c": None})
        await step(rt, "Box", "b2", "drop", ["a", "b"])
        await step(rt, "Box", "b3", "clear", {"n": "new"})
        await step(rt, "Box", "b4", "clear", {})
        await step(rt, "Box", "b00", "put", {"only": "in the log"})
        await step(rt, "Box", "c", "put", {"x": 1})
        await step(rt, "Box", "c", "drop", ["x"])
        await step(rt, "Box", "c", "put", {"y": 2})
        await step(rt, "Bag", "a", "put", {"k": b"\x00"})
        crash(rt)

    uvloop.run(go())
    data = actor_runtime.data_dir
    want = {k: dict(sorted(v.items())) for k, v in model.items() if v}
    got = list(stored_instances(data))
    # In (type, name) order, keys in order, emptied instances left out.
    assert [(t, n) for t, n, _ in got] == sorted(want)
    assert {(t, n): s for t, n, s in got} == want == stored_state(data)
    assert [list(s) for _, _, s in got] == [list(want[t, n]) for t, n, _ in got]
    # One type; some of its instances (asked in any order, unknown ones skipped); keys only.
    assert [n for _, n, _ in stored_instances(data, "Box")] == sorted(
        n for t, n in want if t == "Box"
    )
    assert list(stored_instances(data, "Box", ["c", "nope", "b00", "b4", "b1"])) == [
        ("Box", n, want["Box", n]) for n in ("b00", "b1", "c")
    ]
    assert list(stored_instances(data, "Bag", values=False)) == [
        ("Bag", "a", {"k": None}),
        ("Bag", "g", {"z": None}),
    ]
    assert list(stored_instances(data, "Bo")) == []  # a prefix of a type is not the type
    with pytest.raises(ValueError):
        list(stored_instances(data, names=["b1"]))


def test_a_damaged_snapshot_value_is_named(actor_runtime: RuntimeFactory) -> None:
    async def go() -> None:
        async with actor_runtime(Box) as rt:
            await rt.namespace("Box").id_from_name("b").put({"k": "value"})

    uvloop.run(go())
    path = Path(actor_runtime.data_dir) / "state.sqlite3"
    db = sqlite3.connect(path)
    (blob,) = db.execute("SELECT value FROM kv WHERE key = 'k'").fetchone()
    damaged = bytes([blob[0] ^ 1]) + blob[1:]
    db.execute("UPDATE kv SET value = ? WHERE key = 'k'", (damaged,))
    db.commit()
    db.close()
    with pytest.raises(LogCorruptionError, match="state.sqlite3"):
        list(stored_instances(actor_runtime.data_dir))
    # Keys only: the value is not read, so the instance is still listed.
    assert list(stored_instances(actor_runtime.data_dir, values=False)) == [
        ("Box", "b", {"k": None})
    ]


def test_a_file_that_is_not_a_snapshot_is_named(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"not a database, whatever its name" * 100)
    with pytest.raises(LogCorruptionError, match="state.sqlite3: the snapshot is damaged"):
        list(stored_instances(tmp_path))


def test_a_snapshot_file_without_its_tables_reads_as_empty(actor_runtime: RuntimeFactory) -> None:
    # What a first start that crashed before it made the tables leaves. A start reads it as
    # empty (the log holds everything) and so does check; `fastactor actors` once called it
    # unreadable.
    async def write() -> None:
        rt = actor_runtime(Box)
        await rt.start()
        await rt.namespace("Box").id_from_name("b").put({"k": 1})
        crash(rt)

    uvloop.run(write())
    data = Path(actor_runtime.data_dir)
    (data / "state.sqlite3").write_bytes(b"")
    assert stored_state(data) == {("Box", "b"): {"k": 1}}
    assert inspect_data.check_shard(data)[1:] == (0, 1)

    async def start() -> None:
        async with actor_runtime(Box):
            pass  # its close checkpoints the log's records into the snapshot

    uvloop.run(start())
    assert stored_state(data) == {("Box", "b"): {"k": 1}}
    assert inspect_data.check_shard(data)[1:] == (1, 0)


@pytest.mark.parametrize("bad", [None, "x7", -1, 1.5])
def test_a_snapshot_whose_applied_lsn_is_not_one_is_damaged(
    actor_runtime: RuntimeFactory, bad: Any
) -> None:
    # What a damaged page of the meta table can read as. Before, the server took it as it
    # came (a TypeError at start, or a wrong place in the log to replay from) and so did
    # `fastactor actors` (the log's tail skipped: instances shown without their last
    # writes).
    async def go() -> None:
        async with actor_runtime(Box) as rt:
            await rt.namespace("Box").id_from_name("b").put({"k": 1})

    uvloop.run(go())
    path = Path(actor_runtime.data_dir) / "state.sqlite3"
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET v = ? WHERE k = 'applied_lsn'", (bad,))
    db.commit()
    db.close()
    damaged = f"state.sqlite3: the snapshot is damaged \\(its applied LSN reads {bad!r}\\)"
    with pytest.raises(LogCorruptionError, match=damaged):
        list(stored_instances(actor_runtime.data_dir))

    async def start() -> None:
        async with actor_runtime(Box):
            pass

    with pytest.raises(LogCorruptionError, match=damaged):
        uvloop.run(start())


@pytest.mark.parametrize(("old", "name"), [("format", "formaT"), ("applied_lsn", "applied_lsO")])
def test_a_meta_row_by_a_name_never_written_is_damage(
    actor_runtime: RuntimeFactory, old: str, name: str
) -> None:
    # A meta row's name changed in the table and in its primary key's index alike (so that
    # SQLite's integrity_check finds nothing): "format" once made a start take the snapshot
    # for the first format and rewrite every row sealed a second time, before it refused a
    # value that no longer decoded, so a start changed a damaged file; "applied_lsn" made a
    # start and check replay the whole log over the snapshot.
    _snapshot_and_tail(actor_runtime)
    data = Path(actor_runtime.data_dir)
    db = sqlite3.connect(data / "state.sqlite3")
    db.execute("UPDATE meta SET k = ? WHERE k = ?", (name, old))
    db.commit()
    db.close()
    damaged = f"the snapshot is damaged \\(a meta row reads '{name}'"
    with pytest.raises(LogCorruptionError, match=damaged):
        inspect_data.check_shard(data)
    with pytest.raises(LogCorruptionError, match=damaged):
        list(stored_instances(actor_runtime.data_dir))

    async def start() -> None:
        async with actor_runtime(Box):
            pass

    with pytest.raises(LogCorruptionError, match=damaged):
        uvloop.run(start())


def test_actors_stops_quietly_when_its_reader_goes_away(actor_runtime: RuntimeFactory) -> None:
    async def go() -> None:
        async with actor_runtime(Box) as rt:
            for i in range(20):
                await rt.namespace("Box").id_from_name(f"b{i}").put({"k": i})

    uvloop.run(go())
    for what in (["list"], ["instances", "Box"], ["inspect", "Box"]):
        p = subprocess.Popen(
            ["fastactor", "actors", *what, "--data", str(actor_runtime.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()  # `| head -0`: every write finds the pipe closed
        with p.stderr:
            err = p.stderr.read()
        assert p.wait(30) == 1 and err == b"", (what, err)


def _fill(actor_runtime: RuntimeFactory, n: int, value: Any) -> None:
    async def go() -> None:
        async with actor_runtime(Box) as rt:  # a clean stop: all of it in the snapshot
            ns = rt.namespace("Box")
            await asyncio.gather(
                *(ns.id_from_name(f"b{i:04d}").put({"k": value}) for i in range(n))
            )

    uvloop.run(go())


def test_a_listing_left_waiting_holds_no_snapshot_open(actor_runtime: RuntimeFactory) -> None:
    # `fastactor actors inspect Box | less`: the listing waits on its reader between two
    # instances. A read transaction held open meanwhile would keep SQLite from checkpointing
    # the server's WAL file (it grows as long as the reader waits) and show old rows.
    _fill(actor_runtime, 3000, "old")
    listing = stored_instances(actor_runtime.data_dir, "Box")
    assert next(listing) == ("Box", "b0000", {"k": "old"})
    # What the server's checkpoints do meanwhile: a write, then SQLite's own checkpoint.
    path = Path(actor_runtime.data_dir) / "state.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        new = snapshot_row_value("Box\0b2999", "k", encode_value("new"))
        db.execute("UPDATE kv SET value = ? WHERE inst = ? AND key = 'k'", (new, "Box\0b2999"))
        busy, frames, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()
    assert (busy, frames, done) == (0, 0, 0)  # every frame checkpointed, the file emptied
    rest = list(listing)
    assert len(rest) == 2999 and rest[-1] == ("Box", "b2999", {"k": "new"})


def test_a_log_tail_a_checkpoint_removed_is_read_again_past_it(
    actor_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(actor_runtime, 10, "old")
    read_tail = inspect_data._tail
    calls: list[int] = []

    def tail(shard: Path, start: int, wanted: Any) -> Any:
        calls.append(start)
        if len(calls) == 1:
            # A checkpoint between the snapshot's read and the log's: the records after
            # START went into a newer snapshot and their segment was removed.
            _fill(actor_runtime, 10, "new")
            raise ValueError(f"LSN {start} is older than the oldest record kept")
        return read_tail(shard, start, wanted)

    monkeypatch.setattr(inspect_data, "_tail", tail)
    assert [s for _, _, s in stored_instances(actor_runtime.data_dir)] == [{"k": "new"}] * 10
    assert len(calls) == 2 and calls[1] > calls[0]
    # The same failure with no newer snapshot is the log's damage: it is raised.
    calls.clear()
    monkeypatch.setattr(
        inspect_data, "_tail", lambda *a: (_ for _ in ()).throw(ValueError("gap in the log"))
    )
    with pytest.raises(ValueError, match="gap in the log"):
        list(stored_instances(actor_runtime.data_dir))


def _snapshot_and_tail(actor_runtime: RuntimeFactory) -> None:
    """Three instances checkpointed into the snapshot, then two more records only in the log
    (a crash checkpoints nothing)."""

    async def go() -> None:
        async with actor_runtime(Box) as rt:
            for i in range(3):
                await rt.namespace("Box").id_from_name(f"b{i}").put({"k": i, "j": [i]})
        rt = actor_runtime(Box)
        await rt.start()
        await rt.namespace("Box").id_from_name("b0").put({"k": "later"})
        await rt.namespace("Box").id_from_name("b9").put({"k": "new"})
        crash(rt)

    uvloop.run(go())


def _check(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["fastactor", "actors", "check", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reads_the_snapshot_and_the_log_past_it(actor_runtime: RuntimeFactory) -> None:
    _snapshot_and_tail(actor_runtime)
    data = Path(actor_runtime.data_dir)
    applied, rows, records = inspect_data.check_shard(data)
    assert (rows, records) == (6, 2) and applied >= 3
    p = _check(data)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (
        f"{data}: ok: snapshot of 6 values through LSN {applied:,}, then 2 log records\n"
    )
    p = subprocess.run(
        ["fastactor", "actors", "check", "Box", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "takes no TYPE" in p.stderr


def test_check_finds_damage_a_listing_does_not_read(actor_runtime: RuntimeFactory) -> None:
    # A flipped bit in an instance's name leaves SQLite's pages well formed and moves the row
    # to another instance: listing names reads no value and shows it; check reads it whole.
    _snapshot_and_tail(actor_runtime)
    data = Path(actor_runtime.data_dir)
    db = sqlite3.connect(data / "state.sqlite3")
    db.execute("UPDATE kv SET inst = ? WHERE inst = ? AND key = 'j'", ("Box\0b3", "Box\0b2"))
    db.commit()
    db.close()
    assert [n for _, n, _ in stored_instances(data, values=False)] == [
        "b0",
        "b1",
        "b2",
        "b3",
        "b9",
    ]
    with pytest.raises(LogCorruptionError, match="key 'j' of Box 'b3' is damaged"):
        inspect_data.check_shard(data)
    p = _check(data)
    assert p.returncode == 1
    assert "DAMAGED: " in p.stdout and "state.sqlite3" in p.stdout
    assert p.stderr == "fastactor: 1 of 1 shards damaged\n"


def test_check_finds_a_value_that_does_not_decode(actor_runtime: RuntimeFactory) -> None:
    # Its checksum matches (sealed as written): only decoding it shows it is not a value.
    _snapshot_and_tail(actor_runtime)
    data = Path(actor_runtime.data_dir)
    db = sqlite3.connect(data / "state.sqlite3")
    bad = snapshot_row_value("Box\0b1", "k", b"\xc1")  # a byte msgpack never uses
    db.execute("UPDATE kv SET value = ? WHERE inst = ? AND key = 'k'", (bad, "Box\0b1"))
    db.commit()
    db.close()
    with pytest.raises(LogCorruptionError, match="key 'k' of Box 'b1' does not decode"):
        inspect_data.check_shard(data)


def test_check_names_the_offset_of_a_damaged_log_record(actor_runtime: RuntimeFactory) -> None:
    _snapshot_and_tail(actor_runtime)
    data = Path(actor_runtime.data_dir)
    (segment,) = (data / "log").glob("wal-*.log")
    raw = bytearray(segment.read_bytes())
    # The first record past the snapshot's: the last two records are the crash's.
    at = raw.rfind(msgspec.msgpack.encode("Box\0b0"))
    assert at > 0
    raw[at + 2] ^= 0x20
    segment.write_bytes(bytes(raw))
    with pytest.raises(LogCorruptionError, match=r"wal-\d+\.log: byte offset \d+"):
        inspect_data.check_shard(data)
    p = _check(data)
    assert p.returncode == 1 and "byte offset" in p.stdout


def test_check_reads_again_past_a_checkpoint_that_removed_the_log(
    actor_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(actor_runtime, 10, "old")
    check_log = inspect_data._check_log
    calls: list[int] = []

    def checking(log: Path, start: int) -> int:
        calls.append(start)
        if len(calls) == 1:  # a server checkpointed meanwhile: a newer snapshot holds it
            _fill(actor_runtime, 10, "new")
            raise ValueError(f"LSN {start} is older than the oldest record kept")
        return check_log(log, start)

    monkeypatch.setattr(inspect_data, "_check_log", checking)
    assert inspect_data.check_shard(Path(actor_runtime.data_dir))[1] == 10
    assert len(calls) == 2 and calls[1] > calls[0]
    monkeypatch.setattr(
        inspect_data, "_check_log", lambda *a: (_ for _ in ()).throw(ValueError("gap"))
    )
    with pytest.raises(LogCorruptionError, match="gap: records after the snapshot's LSN"):
        inspect_data.check_shard(Path(actor_runtime.data_dir))


def test_check_finds_tables_by_name_as_sqlite_does(actor_runtime: RuntimeFactory) -> None:
    # A flipped bit in sqlite_master's `type` column ("table" reads "tablE") harms nothing:
    # SQLite and a start find the table by its name. check must too, and read it (it once
    # took the table for missing, the snapshot for empty, and said ok over damaged values).
    _snapshot_and_tail(actor_runtime)
    data = Path(actor_runtime.data_dir)
    db = sqlite3.connect(data / "state.sqlite3")
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET type = 'tablE' WHERE name IN ('kv', 'meta')")
    db.commit()
    db.close()
    assert inspect_data.check_shard(data)[1:] == (6, 2)
    db = sqlite3.connect(data / "state.sqlite3")
    (blob,) = db.execute("SELECT value FROM kv WHERE key = 'k' LIMIT 1").fetchone()
    db.execute("UPDATE kv SET value = ? WHERE value = ?", (bytes([blob[0] ^ 4]) + blob[1:], blob))
    db.commit()
    db.close()
    with pytest.raises(LogCorruptionError, match="checksum mismatch"):
        inspect_data.check_shard(data)


def test_check_agrees_with_a_start_on_a_damaged_log(
    actor_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    # The log's records past the snapshot, damaged at random: bits flipped, a run of bytes
    # overwritten, the file cut short. A start drops a torn tail (the last batch) and refuses
    # damage before it naming the file; check, run first on the same bytes (a start cuts
    # the torn tail away), must say damaged exactly when the start refuses.
    async def build() -> None:
        async with actor_runtime(Box) as rt:
            await rt.namespace("Box").id_from_name("base").put({"k": 0})
        rt = actor_runtime(Box)
        await rt.start()
        ns = rt.namespace("Box")
        for i in range(40):  # one batch each: a record past the snapshot each
            await ns.id_from_name(f"b{i % 7}").put({f"k{i}": "v" * (i * 13 % 90)})
        crash(rt)

    uvloop.run(build())
    base = Path(actor_runtime.data_dir)
    rnd = random.Random(20261125)
    outcomes = {"refused": 0, "started": 0}
    for trial in range(150):
        copy = tmp_path / f"t{trial}"
        shutil.copytree(base, copy)
        (segment,) = (copy / "log").glob("wal-*.log")
        raw = bytearray(segment.read_bytes())
        how = rnd.choice(["bits", "run", "cut"])
        if how == "bits":
            for _ in range(rnd.randrange(1, 4)):
                raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        elif how == "run":
            at = rnd.randrange(len(raw))
            n = min(rnd.randrange(1, 64), len(raw) - at)
            raw[at : at + n] = rnd.randbytes(n)
        else:
            del raw[rnd.randrange(len(raw)) :]
        segment.write_bytes(bytes(raw))
        try:
            inspect_data.check_shard(copy)
            found = None
        except (LogCorruptionError, OSError, ValueError) as e:
            found = e

        async def start(copy: Path = copy) -> None:
            async with Runtime(copy, [Box]):
                pass

        try:
            uvloop.run(start())
        except (LogCorruptionError, OSError, ValueError) as e:
            assert found is not None, (trial, how, e)
            assert str(copy) in str(e) and str(copy) in str(found), (trial, how, e, found)
            outcomes["refused"] += 1
        else:
            assert found is None, (trial, how, found)
            outcomes["started"] += 1
        shutil.rmtree(copy)
    assert min(outcomes.values()) > 10, outcomes  # both kinds of outcome were tried
