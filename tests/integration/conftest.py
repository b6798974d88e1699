"""Starts real `fastactor serve` processes on 127.0.0.1 and always stops them."""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
nofile_ = resource.RLIMIT_NOFILE


def free_ports(n: int) -> int:
    while True:
        base = random.randint(20000, 60000)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue


class Server:
    def __init__(self, proc: subprocess.Popen[str], urls: list[str], lines: list[str]) -> None:
        self.proc = proc
        self.urls = urls
        self.lines = lines

    def workers(self) -> list[int]:
        # pgrep hangs with libasan preloaded (make asan): run it without.
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, env=env
        ).stdout
        return [int(x) for x in out.split()]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    procs: list[subprocess.Popen[str]] = []

    def start(
        *dirs: str | Path,
        data: Path | None = None,
        workers: int = 2,
        extra: tuple[str, ...] = (),
        nofile: tuple[int, int] | None = None,
    ) -> Server:
        """NOFILE: the open files limit (soft, hard) serve starts with."""
        port = free_ports(len(dirs))
        p = subprocess.Popen(
            [
                "fastactor",
                "serve",
                *map(str, dirs),
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--data",
                str(data or tmp_path / "data"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(nofile_, nofile),
        )
        procs.append(p)
        lines: list[str] = []
        deadline = time.time() + 60
        assert p.stdout is not None
        while len([x for x in lines if "→ http://" in x]) < len(dirs):
            assert time.time() < deadline and p.poll() is None, "".join(lines)
            lines.append(p.stdout.readline())
        urls = [m.group(1) for x in lines if (m := re.search(r"→ (http://\S+)", x))]
        out = p.stdout

        def drain() -> None:
            for line in out:
                lines.append(line)

        threading.Thread(target=drain, daemon=True).start()
        return Server(p, urls, lines)

    yield start
    for p in procs:
        # The whole group, even once serve itself is gone: its workers may outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


def function_dir(parent: Path, name: str, app: str, actors: dict[str, str] | None = None) -> Path:
    """A function directory PARENT/NAME whose app.py is APP, its manifest binding ACTORS
    (binding: type; default none)."""
    d = parent / name
    d.mkdir()
    bindings = "".join(
        f'[[actors]]\nbinding = "{b}"\ntype = "{t}"\n' for b, t in (actors or {}).items()
    )
    (d / "fastactor.toml").write_text(f'name = "{name}"\nmain = "app.py"\n{bindings}')
    (d / "app.py").write_text(app)
    return d


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fastactor", *args], capture_output=True, text=True, timeout=timeout)


__all__ = ["EXAMPLES", "Server", "free_ports", "run_cli", "Any"]
