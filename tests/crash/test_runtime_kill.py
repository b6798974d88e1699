"""kill -9 a process running actors under load, again and again over one data directory:
after each restart every acknowledged turn is there, and turns are all-or-nothing."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import uvloop

from fastactor import Runtime, StatefulActor

sys.path.insert(0, str(Path(__file__).parent))
from childproc import run_and_kill  # noqa: E402

CHILD = Path(__file__).with_name("runtime_child.py")
CYCLES = 20
NAMES = 40


class Counter(StatefulActor):
    async def dump(self) -> tuple[int, int | None, int | None]:
        s = self.ctx.storage
        total = await s.get("total") or 0
        return total, await s.get(f"step-{total}"), await s.get(f"step-{total + 1}")


def run_child(data: Path, tasks: int, seconds: float) -> dict[str, int]:
    acked: dict[str, int] = {}

    def on_line(line: str) -> None:
        name, total = line.split()
        acked[name] = max(acked.get(name, 0), int(total))

    run_and_kill([str(CHILD), str(data), str(tasks), str(NAMES)], on_line, seconds)
    return acked


def read_state(data: Path) -> dict[str, tuple[int, int | None, int | None]]:
    async def go() -> dict[str, tuple[int, int | None, int | None]]:
        async with Runtime(data, [Counter]) as rt:
            ns = rt.namespace("Counter")
            return {f"c{i}": await ns.id_from_name(f"c{i}").dump() for i in range(NAMES)}

    return uvloop.run(go())


def test_sigkill_under_load_keeps_every_acknowledged_turn(tmp_path: Path) -> None:
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    data = tmp_path / "data"
    before: dict[str, int] = {}
    total_acked = 0
    for cycle in range(CYCLES):
        acked = run_child(data, rnd.choice([1, 16, 256]), rnd.uniform(0.05, 0.4))
        total_acked += len(acked)
        state = read_state(data)
        for name, (total, step, next_step) in state.items():
            # Acknowledged turns are all there, and nothing already there went away.
            assert total >= acked.get(name, 0), f"cycle {cycle}: {name} lost acked turns"
            assert total >= before.get(name, 0), f"cycle {cycle}: {name} went back"
            # Turns are atomic: a turn's two writes are there together or not at all.
            assert step == (total or None) and next_step is None, f"cycle {cycle}: {name}"
            before[name] = total
    assert total_acked > 0
