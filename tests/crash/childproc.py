"""Runs a crash-test child under load and kills it with SIGKILL, collecting its report."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable


def run_and_kill(argv: list[str], on_line: Callable[[str], None], seconds: float) -> str:
    """Starts `python ARGV`, waits for its first line (returned), lets it run SECONDS, then
    SIGKILLs it. ON_LINE gets every later complete line (a line the kill cut short was never
    reported in full, so it does not count)."""
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    opened = threading.Event()
    first: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.endswith("\n"):
                break
            if not opened.is_set():
                first.append(line)
                opened.set()
            else:
                on_line(line.rstrip("\n"))

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert opened.wait(30), "the child did not start"
        time.sleep(seconds)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        t.join(30)
        assert proc.stdout is not None
        proc.stdout.close()
    return first[0].rstrip("\n")


async def report_forever(call: Callable[[random.Random], Awaitable[str]], tasks: int) -> None:
    """In a child: TASKS tasks loop on CALL and print each acknowledged result as a line
    (flushed every 2 ms), until the process is killed."""
    out = sys.stdout
    print("open", flush=True)

    async def worker() -> None:
        rnd = random.Random()
        while True:
            out.write(await call(rnd) + "\n")

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.002)
            out.flush()

    await asyncio.gather(flusher(), *(worker() for _ in range(tasks)))
