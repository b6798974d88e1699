"""Partitions and shard directories of a served data directory (server/layout.py): moving
instances to another worker count keeps every committed write, log tails included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fastactor import AlarmInfo, Runtime, StatefulActor
from fastactor.server.layout import PARTITIONS, Layout, owner_of, prepare, read_layout
from fastactor.testing import crash


class Box(StatefulActor):
    async def put(self, v: Any) -> None:
        await self.ctx.storage.put("v", v)
        await self.ctx.storage.set_alarm(4102444800000)  # 2100-01-01

    async def get(self) -> tuple[Any, int | None]:
        return await self.ctx.storage.get("v"), await self.ctx.storage.get_alarm()

    async def alarm(self, info: AlarmInfo) -> None:
        pass


NAMES = [f"n{i}" for i in range(60)]


def fill(lay: Layout, data: Path, value: str, crash_it: bool) -> None:
    """Writes VALUE into every name, each in the shard that owns it."""

    async def go() -> None:
        for i, d in enumerate(lay.shard_dirs(data)):
            rt = Runtime(d, [Box])
            await rt.start()
            ns = rt.namespace("Box")
            for n in NAMES:
                if owner_of("default", "Box", n, lay.workers) == i:
                    await ns.id_from_name(n).put(f"{value}-{n}")
            if crash_it:
                crash(rt)  # the writes are in the log only, not in the snapshot
            else:
                await rt.close()

    uvloop.run(go())


def read_all(lay: Layout, data: Path) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        out = {}
        for i, d in enumerate(lay.shard_dirs(data)):
            async with Runtime(d, [Box]) as rt:
                for n in NAMES:
                    if owner_of("default", "Box", n, lay.workers) == i:
                        out[n] = await rt.namespace("Box").id_from_name(n).get()
        return out

    return uvloop.run(go())


def test_a_new_directory_gets_a_layout(tmp_path: Path) -> None:
    lay = prepare(tmp_path / "d", 3)
    assert lay == Layout(3, PARTITIONS, 0)
    assert read_layout(tmp_path / "d") == lay
    assert prepare(tmp_path / "d", 3) == lay


@pytest.mark.parametrize("crash_it", [False, True])
def test_moving_keeps_every_write(tmp_path: Path, crash_it: bool) -> None:
    data = tmp_path / "d"
    lay = prepare(data, 2)
    fill(lay, data, "a", crash_it)
    moves: list[tuple[int, int]] = []
    for workers in (3, 1, 2):
        lay = prepare(data, workers, lambda o, n: moves.append((o.workers, n.workers)))
        got = read_all(lay, data)
        assert got == {n: (f"a-{n}", 4102444800000) for n in NAMES}
    assert moves == [(2, 3), (3, 1), (1, 2)]
    assert sorted(p.name for p in data.iterdir()) == ["gen-3", "layout.json"]


def test_owner_spreads_and_respects_accounts() -> None:
    counts = [0, 0, 0]
    for i in range(3000):
        counts[owner_of("default", "T", f"x{i}", 3)] += 1
    assert min(counts) > 800
    assert owner_of("a", "T", "x", 7) == owner_of("a", "T", "x", 7)
    assert any(owner_of("a", "T", f"x{i}", 7) != owner_of("b", "T", f"x{i}", 7) for i in range(9))


def test_bad_layouts_are_refused(tmp_path: Path) -> None:
    for body in ("{", '{"workers": "many"}', '{"workers": 0}', "[1]"):
        (tmp_path / "layout.json").write_text(body)
        with pytest.raises(ValueError, match="layout.json"):
            prepare(tmp_path, 2)


def test_a_directory_in_use_is_not_moved(tmp_path: Path) -> None:
    data = tmp_path / "d"
    lay = prepare(data, 1)

    async def go() -> None:
        async with Runtime(lay.shard_dirs(data)[0], [Box]):  # a running server holds it
            with pytest.raises(OSError):
                await asyncio.get_running_loop().run_in_executor(None, prepare, data, 2)

    uvloop.run(go())
    assert json.loads((data / "layout.json").read_text())["workers"] == 1
    assert not list(data.glob("gen-*"))
