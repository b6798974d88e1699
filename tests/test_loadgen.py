"""benchmarks/loadgen.c, bench_http's load generator (wrk is the alternative): it builds without a
warning, counts what a server answers, and tells refusals and dropped connections apart."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "benchmarks" / "loadgen.c"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

# Answers each request with STATUS; with CLOSE_AFTER n, closes each connection after its nth
# answer (a server dropping keep-alive connections).
SERVER = textwrap.dedent(
    """
    import asyncio, sys
    STATUS, CLOSE_AFTER = int(sys.argv[2]), int(sys.argv[3])
    class P(asyncio.Protocol):
        def connection_made(self, t):
            self.t, self.buf, self.answered = t, b"", 0
        def data_received(self, d):
            self.buf += d
            while b"\\r\\n\\r\\n" in self.buf:
                head, _, rest = self.buf.partition(b"\\r\\n\\r\\n")
                n = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
                if len(rest) < n:
                    return
                self.buf = rest[n:]
                body = b'{"path":"' + head.split(b" ")[1] + b'"}'
                self.t.write(b"HTTP/1.1 %d X\\r\\ncontent-length: %d\\r\\n\\r\\n%s"
                             % (STATUS, len(body), body))
                self.answered += 1
                if self.answered == CLOSE_AFTER:
                    self.t.close()
                    return
    async def main():
        s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
        print("ready", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loadgen") / "loadgen"
    p = subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(out), str(SRC)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    return out


@contextlib.contextmanager
def serve(port: int, status: int, close_after: int = 0) -> Iterator[None]:
    p = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(status), str(close_after)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        yield
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def run(loadgen: Path, port: int, requests: Path, *opts: str) -> dict[str, float]:
    p = subprocess.run(
        [str(loadgen), "-t", "2", "-c", "8", "-d", "1", *opts, "127.0.0.1", str(port)]
        + [str(requests)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    return {k: float(v) for k, v in (line.split(" ") for line in p.stdout.splitlines())}


@pytest.fixture
def requests(tmp_path: Path) -> Path:
    f = tmp_path / "requests"
    f.write_text('POST\t/a\t{"amount": 1}\nGET\t/b\t\n')
    return f


def test_counts_answers_and_their_latency(loadgen: Path, requests: Path) -> None:
    with serve(19871, 200):
        got = run(loadgen, 19871, requests)
    assert got["requests"] > 100
    assert 0.9 < got["seconds"] < 2
    assert got["rps"] == pytest.approx(got["requests"] / got["seconds"], rel=0.01)
    assert 0 < got["p50_ms"] <= got["p99_ms"] < 1000
    assert got["non2xx"] == 0 and got["errors"] == 0


def test_refusals_are_non2xx_and_dropped_connections_errors(loadgen: Path, requests: Path) -> None:
    with serve(19872, 404):
        refused = run(loadgen, 19872, requests, "-r")
    assert refused["requests"] > 100 and refused["non2xx"] == refused["requests"]
    assert refused["errors"] == 0
    with serve(19873, 200, close_after=3):
        dropped = run(loadgen, 19873, requests)
    # Each connection is closed after three answers; loadgen opens it again and goes on.
    assert dropped["requests"] > 100 and dropped["non2xx"] == 0
    assert dropped["requests"] / 4 < dropped["errors"] <= dropped["requests"] / 3 + 8


def test_a_bad_request_file_is_refused(loadgen: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("GET /no-tab\n")
    p = subprocess.run(
        [str(loadgen), "-d", "1", "127.0.0.1", "1", str(bad)], capture_output=True, text=True
    )
    assert p.returncode == 2 and "without a tab" in p.stderr
