"""Crash-test child: opens the log in argv[1], appends from many tasks, and prints
"LSN HEX-PAYLOAD" for each record once it is durable, until it is killed."""

import asyncio
import os
import sys

import uvloop

from fastactor import WriteAheadLog


async def main(path: str, tasks: int) -> None:
    w = WriteAheadLog(path, segment_size=64 * 1024)
    out = sys.stdout
    print("open", w.recovery["next_lsn"], flush=True)

    async def writer() -> None:
        while True:
            data = os.urandom(8 + int.from_bytes(os.urandom(1), "little"))
            lsn = w.append(data)
            await w.wait_durable(lsn)
            out.write(f"{lsn} {data.hex()}\n")

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.001)
            out.flush()

    await asyncio.gather(flusher(), *(writer() for _ in range(tasks)))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
