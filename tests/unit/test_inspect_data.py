"""Reading a data directory without its server: snapshot rows and the log's tail, merged."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fastactor import StatefulActor
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


def test_snapshot_and_log_tail_merge_into_each_instances_state(
    actor_runtime: RuntimeFactory,
) -> None:
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
    import sqlite3

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
