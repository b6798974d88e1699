"""Crash-test child: a Runtime under load. Deposits 1 into accounts from many tasks and prints
"NAME TOTAL" for every acknowledged deposit, until it is killed. Checkpoints run often."""

import random
import sys

import uvloop
from childproc import report_forever

from fastactor import Runtime, StatefulActor


class Counter(StatefulActor):
    async def add(self, n: int) -> int:
        total: int = (await self.ctx.storage.get("total") or 0) + n
        await self.ctx.storage.put("total", total)
        await self.ctx.storage.put(f"step-{total}", total)
        return total


async def main(path: str, tasks: int, names: int) -> None:
    async with Runtime(path, [Counter], checkpoint_interval=0.05, idle_timeout=0.2) as rt:
        ns = rt.namespace("Counter")

        async def add(rnd: random.Random) -> str:
            name = f"c{rnd.randrange(names)}"
            return f"{name} {await ns.id_from_name(name).add(1)}"

        await report_forever(add, tasks)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
