"""Crash-test child: sets alarms under load. Each arm() call numbers its alarm (seq) and
prints "NAME SEQ" once acknowledged; the alarm handler marks its alarm fired. Runs until it is
killed."""

import random
import sys
import time

import uvloop
from childproc import report_forever

from fastactor import AlarmInfo, Runtime, StatefulActor


class Pager(StatefulActor):
    async def arm(self, delay_ms: int) -> int:
        s = self.ctx.storage
        seq: int = (await s.get("seq") or 0) + 1
        await s.put("seq", seq)
        await s.put("cur", seq)
        await s.set_alarm(time.time() * 1000 + delay_ms)
        return seq

    async def alarm(self, info: AlarmInfo) -> None:
        cur = await self.ctx.storage.get("cur")
        await self.ctx.storage.put(f"fired-{cur}", True)


async def main(path: str, tasks: int, names: int) -> None:
    async with Runtime(path, [Pager], checkpoint_interval=0.05, idle_timeout=0.2) as rt:
        ns = rt.namespace("Pager")

        async def arm(rnd: random.Random) -> str:
            name = f"p{rnd.randrange(names)}"
            return f"{name} {await ns.id_from_name(name).arm(rnd.randrange(-50, 300))}"

        await report_forever(arm, tasks)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
