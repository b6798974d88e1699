"""Crash-test child: a Runtime under load. Deposits 1 into accounts from many tasks and prints
"NAME TOTAL" for every acknowledged deposit, until it is killed. Checkpoints run often."""

import asyncio
import random
import sys

import uvloop

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
        out = sys.stdout
        print("open", flush=True)

        async def worker() -> None:
            rnd = random.Random()
            while True:
                name = f"c{rnd.randrange(names)}"
                total = await ns.id_from_name(name).add(1)
                out.write(f"{name} {total}\n")

        async def flusher() -> None:
            while True:
                await asyncio.sleep(0.002)
                out.flush()

        await asyncio.gather(flusher(), *(worker() for _ in range(tasks)))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
