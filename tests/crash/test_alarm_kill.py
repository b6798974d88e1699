"""kill -9 a process setting alarms under load, again and again: after each restart every
acknowledged alarm fires (or was replaced by a later one, which fires), none is left behind."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

import uvloop

from fastactor import AlarmInfo, Runtime, StatefulActor

sys.path.insert(0, str(Path(__file__).parent))
from childproc import run_and_kill  # noqa: E402

CHILD = Path(__file__).with_name("alarm_child.py")
CYCLES = 8
NAMES = 30


class Pager(StatefulActor):
    async def alarm(self, info: AlarmInfo) -> None:
        cur = await self.ctx.storage.get("cur")
        await self.ctx.storage.put(f"fired-{cur}", True)

    async def state(self, acked: int) -> tuple[int, int | None, bool, bool]:
        s = self.ctx.storage
        cur = await s.get("cur") or 0
        return (
            cur,
            await s.get_alarm(),
            bool(await s.get(f"fired-{cur}")),
            bool(await s.get(f"fired-{acked}")),
        )


def check_after_restart(data: Path, acked: dict[str, int], cycle: int) -> None:
    async def go() -> None:
        async with Runtime(data, [Pager]) as rt:
            ns = rt.namespace("Pager")
            end = time.monotonic() + 10
            while True:
                states = {
                    f"p{i}": await ns.id_from_name(f"p{i}").state(acked.get(f"p{i}", 0))
                    for i in range(NAMES)
                }
                if all(alarm is None for _, alarm, _, _ in states.values()):
                    break
                assert time.monotonic() < end, f"cycle {cycle}: alarms did not fire"
                await asyncio.sleep(0.05)
            for name, (cur, _, fired_cur, fired_acked) in states.items():
                got = acked.get(name, 0)
                assert cur >= got, f"cycle {cycle}: {name} lost an acknowledged arm()"
                if cur:
                    assert fired_cur, f"cycle {cycle}: {name}: alarm {cur} never fired"
                if got == cur and got:
                    assert fired_acked

    uvloop.run(go())


def test_sigkill_keeps_every_acknowledged_alarm(tmp_path: Path) -> None:
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    data = tmp_path / "data"
    total = 0
    for cycle in range(CYCLES):
        acked: dict[str, int] = {}

        def on_line(line: str, acked: dict[str, int] = acked) -> None:
            name, seq = line.split()
            acked[name] = max(acked.get(name, 0), int(seq))

        argv = [str(CHILD), str(data), str(rnd.choice([1, 16, 128])), str(NAMES)]
        run_and_kill(argv, on_line, rnd.uniform(0.1, 0.4))
        total += len(acked)
        check_after_restart(data, acked, cycle)
    assert total > 0
