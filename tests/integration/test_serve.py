"""`fastactor serve` as a user runs it: a real process tree on 127.0.0.1."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from conftest import EXAMPLES, Server, free_ports, function_dir, run_cli

import fastactor
from fastactor import Runtime, StatefulActor
from fastactor.server.layout import owner_of

ACCOUNT = EXAMPLES / "account"
READONLY = EXAMPLES / "account-readonly"


def post(url: str, amount: object) -> httpx.Response:
    return httpx.post(url, json={"amount": amount}, timeout=30)


def test_quick_start(serve: Callable[..., Server]) -> None:
    (url,) = serve(ACCOUNT).urls
    assert post(f"{url}/accounts/alice/deposit", 100).json() == {
        "account": "alice",
        "ok": True,
        "balance": 100,
    }
    assert post(f"{url}/accounts/alice/debit", 30).json()["balance"] == 70
    assert post(f"{url}/accounts/alice/debit", 500).json() == {
        "account": "alice",
        "ok": False,
        "balance": 70,
    }
    assert httpx.get(f"{url}/accounts/alice").json() == {"account": "alice", "balance": 70}
    r = httpx.post(f"{url}/accounts/alice/debit", json={})
    assert r.status_code == 400 and "amount" in r.json()["error"]
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/nowhere").status_code == 404
    head = httpx.head(f"{url}/accounts/alice")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"]
    for method, path, allow in (
        ("DELETE", "/accounts/alice", "GET, HEAD"),
        ("GET", "/accounts/alice/debit", "POST"),
    ):
        r = httpx.request(method, f"{url}{path}")
        assert (r.status_code, r.headers["allow"]) == (405, allow)
    assert httpx.get(f"{url}/accounts/alice").json()["balance"] == 70  # nothing changed
    # A name no instance may have (over 2048 UTF-8 bytes) is the client's error.
    r = httpx.get(f"{url}/accounts/{'n' * 3000}")
    assert r.status_code == 400 and "2048" in r.json()["error"]
    assert httpx.get(f"{url}/accounts/{'n' * 2048}").json()["balance"] == 0
    # The path keeps the client's %-escapes; the example decodes the name, so each spelling
    # of one name reaches one account, and bytes that are not UTF-8 are refused.
    assert post(f"{url}/accounts/zo%C3%AB/deposit", 5).json()["account"] == "zoë"
    assert httpx.get(f"{url}/accounts/zo%c3%ab").json() == {"account": "zoë", "balance": 5}
    r = httpx.get(f"{url}/accounts/zo%FF")
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]


def test_parallel_debits_on_one_account_never_overdraw(serve: Callable[..., Server]) -> None:
    (url,) = serve(ACCOUNT).urls
    post(f"{url}/accounts/hot/deposit", 100)

    async def go() -> list[dict[str, object]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=60) as c:
            rs = await asyncio.gather(
                *(c.post(f"{url}/accounts/hot/debit", json={"amount": 1}) for _ in range(300))
            )
            return [r.json() for r in rs]

    results = asyncio.run(go())
    assert sum(bool(r["ok"]) for r in results) == 100
    assert httpx.get(f"{url}/accounts/hot").json()["balance"] == 0


def test_reference_function_reaches_the_owners_state(serve: Callable[..., Server]) -> None:
    admin = free_ports(1)
    own, view = serve(ACCOUNT, READONLY, extra=("--admin-port", str(admin))).urls
    for i in range(20):  # names land on both workers
        post(f"{own}/accounts/u{i}/deposit", i)
    for i in range(20):
        assert httpx.get(f"{view}/u{i}").json() == {"account": f"u{i}", "balance": i, "view": True}
    assert httpx.get(f"{view}/nobody/at/all").status_code == 404
    r = httpx.post(f"{view}/u1")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
    post(f"{own}/accounts/%C3%A9mile/deposit", 3)
    assert httpx.get(f"{view}/%c3%a9mile").json() == {
        "account": "émile",
        "balance": 3,
        "view": True,
    }
    # /metrics tells the two functions' responses apart.
    got: dict[tuple[str, str], int] = {}
    for line in httpx.get(f"http://127.0.0.1:{admin}/metrics").text.splitlines():
        pattern = r'fastactor_http_responses_total\{worker="\d",function="([\w-]+)",code="(\dxx)"'
        m = re.fullmatch(pattern + r"\} (\d+)", line)
        if m:
            got[m.group(1), m.group(2)] = got.get((m.group(1), m.group(2)), 0) + int(m.group(3))
    assert {k: n for k, n in got.items() if n} == {
        ("account", "2xx"): 21,
        ("account-readonly", "2xx"): 21,
        ("account-readonly", "4xx"): 2,
    }


def test_startup_failures_exit_2_and_name_the_culprit(tmp_path: Path) -> None:
    port = str(free_ports(2))
    p = run_cli("serve", str(READONLY), "--port", port, "--data", str(tmp_path / "d"))
    assert p.returncode == 2 and "ACCOUNT" in p.stderr and "Account" in p.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "app.py").write_text((READONLY / "app.py").read_text())
    (other / "fastactor.toml").write_text(
        (READONLY / "fastactor.toml")
        .read_text()
        .replace('main = "app.py"', 'main = "app.py"\naccount = "other"')
    )
    p = run_cli("serve", str(ACCOUNT), str(other), "--port", port, "--data", str(tmp_path / "d"))
    assert p.returncode == 2 and "other" in p.stderr and "Account" in p.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "app.py").write_text("async def fetch(request, env): pass\n")
    (bad / "fastactor.toml").write_text('name = "Bad Name"\nmain = "app.py"\n')
    p = run_cli("serve", str(bad), "--port", port, "--data", str(tmp_path / "d"))
    assert p.returncode == 2 and "fastactor.toml" in p.stderr and "'name'" in p.stderr
    # A setting of an actor class that is not valid stops start-up the same way, before any
    # worker starts (it used to end in a worker's traceback and exit code 1).
    (bad / "app.py").write_text(
        "from fastactor import StatefulActor\n"
        "class Thing(StatefulActor):\n"
        "    method_timeout = '30s'\n"
        "async def fetch(request, env): pass\n"
    )
    (bad / "fastactor.toml").write_text(
        'name = "bad"\nmain = "app.py"\n[[actors]]\nbinding = "THING"\ntype = "Thing"\n'
    )
    p = run_cli("serve", str(bad), "--port", port, "--data", str(tmp_path / "d"))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert str(bad / "fastactor.toml") in p.stderr and "binding THING: type Thing" in p.stderr
    assert "Thing.method_timeout must be a number of seconds or None, not str" in p.stderr
    # Ports that are not TCP ports, or that two listeners would share, are usage errors.
    for args in (["--port", "70000"], ["--port", "0"], ["--admin-port", "65536"]):
        p = run_cli("serve", str(ACCOUNT), *args, "--data", str(tmp_path / "d"))
        assert p.returncode == 2 and "is not a TCP port (1 to 65535)" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    for workers in ("0", "100000"):  # 100000 used to end in a traceback (argv too long)
        p = run_cli("serve", str(ACCOUNT), "--workers", workers, "--data", str(tmp_path / "d"))
        assert p.returncode == 2 and "--workers must be between 1 and 512" in p.stderr, p.stderr
    for flag, value, says in (
        ("--max-body", "10 furlongs", "is not a size (bytes, or 64k, 10MiB, 1G)"),
        ("--max-body", "1G", "is over 512 MiB"),
        ("--fetch-timeout", "0", "is not a number of seconds"),
        ("--idle-timeout", "nan", "is not a number of seconds"),
        ("--max-connections", "0", "is not a number of connections"),
        ("--max-body-memory", "2 tons", "is not a size (bytes, or 64k, 10MiB, 1G)"),
        ("--max-cache-memory", "lots", "is not a size (bytes, or 64k, 10MiB, 1G)"),
    ):
        p = run_cli("serve", str(ACCOUNT), flag, value, "--data", str(tmp_path / "d"))
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    for flag, value, says in (
        ("--commit-window-us", "100001", "--commit-window-us must be between 0 and 100000"),
        ("--commit-window-records", "0", "--commit-window-records must be between 1 and"),
        ("--commit-window-records", "16.5", "invalid int value"),
        ("--max-resident", "-1", "--max-resident must be 0 (no bound) or a number of"),
        ("--max-resident", "lots", "invalid int value"),
    ):
        p = run_cli("serve", str(ACCOUNT), flag, value, "--data", str(tmp_path / "d"))
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = run_cli("serve", str(ACCOUNT), "--max-body-memory", "1MiB", "--data", str(tmp_path / "d"))
    says = "--max-body-memory (1048576 bytes) must be at least --max-body (10485760 bytes)"
    assert p.returncode == 2 and says in p.stderr, p.stderr
    for stall in ("0.5", "-1", "nan", "1e9"):
        p = run_cli("serve", str(ACCOUNT), "--stall-timeout", stall, "--data", str(tmp_path / "d"))
        assert p.returncode == 2 and "--stall-timeout must be 0 (never) or" in p.stderr, p.stderr
    p = run_cli(
        "serve", str(ACCOUNT), str(READONLY), "--port", "65535", "--data", str(tmp_path / "d")
    )
    assert p.returncode == 2 and "port 65536, not a TCP port" in p.stderr, p.stderr
    p = run_cli(
        "serve", str(ACCOUNT), "--port", port, "--admin-port", port, "--data", str(tmp_path / "d")
    )
    assert p.returncode == 2 and "the --admin-port" in p.stderr, p.stderr


def test_a_port_or_data_directory_in_use_stops_start_up(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    srv = serve(ACCOUNT, workers=1)
    port = srv.urls[0].rsplit(":", 1)[1]
    # A second server on the port would share it with the first (SO_REUSEPORT) and answer
    # half its requests from other data.
    r = run_cli("serve", str(ACCOUNT), "--port", port, "--data", str(tmp_path / "other"))
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert not (tmp_path / "other").exists()
    # A second server on the data directory would share its logs.
    r = run_cli(
        "serve", str(ACCOUNT), "--port", str(free_ports(1)), "--data", str(tmp_path / "data")
    )
    assert r.returncode == 1 and "in use by another fastactor serve" in r.stderr, r.stderr
    # The first serves on, alone: every deposit lands on its one account.
    for _ in range(10):
        httpx.post(f"{srv.urls[0]}/accounts/solo/deposit", json={"amount": 1})
    assert httpx.get(f"{srv.urls[0]}/accounts/solo").json()["balance"] == 10
    # Two functions of one server on one port.
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "app.py").write_text((READONLY / "app.py").read_text())
    base = free_ports(2)
    (fixed / "fastactor.toml").write_text(
        (READONLY / "fastactor.toml")
        .read_text()
        .replace('main = "app.py"', f'main = "app.py"\nport = {base}')
    )
    r = run_cli("serve", str(ACCOUNT), str(fixed), "--port", str(base), "--data", str(fixed))
    assert r.returncode == 2 and f"port {base}" in r.stderr and "fastactor.toml" in r.stderr


def running(pid: int) -> bool:
    """Whether process PID is alive (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_of_a_killed_supervisor_drain_and_exit(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """Workers do not serve on unsupervised (no restarts, holding the port) once their
    supervisor is gone: they drain and exit, and a new server starts on the same port and data."""
    srv = serve(ACCOUNT, workers=2)
    httpx.post(f"{srv.urls[0]}/accounts/orphan/deposit", json={"amount": 5})
    workers = srv.workers()
    assert len(workers) == 2
    os.kill(srv.proc.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while any(running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(running(w) for w in workers)
    port = int(srv.urls[0].rsplit(":", 1)[1])
    again = serve(ACCOUNT, workers=2, extra=("--port", str(port)))
    assert again.urls[0].endswith(f":{port}")
    assert httpx.get(f"{again.urls[0]}/accounts/orphan").json()["balance"] == 5


def raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def test_bad_requests_get_a_status_and_change_nothing(serve: Callable[..., Server]) -> None:
    (url,) = serve(ACCOUNT).urls
    post(f"{url}/accounts/z/deposit", 5)
    assert raw(url, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"POST /accounts/z/debit HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n"
    assert raw(url, big + b"x" * 1000).startswith(b"HTTP/1.1 413")
    chunked = (
        b"POST /accounts/z/debit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100000\r\n" + b"x" * 0x100000 + b"\r\n") * 11
    )
    assert raw(url, chunked).startswith(b"HTTP/1.1 413")
    headers = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    assert raw(url, headers).startswith(b"HTTP/1.1 431")
    # Pipelining: three requests in one write, three answers in order.
    pipe = b"".join(b"GET /accounts/z HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(2))
    pipe += b"GET /accounts/z HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert raw(url, pipe).count(b'{"account":"z","balance":5}') == 3
    assert httpx.get(f"{url}/accounts/z").json()["balance"] == 5


def test_sigterm_drains_exits_0_and_state_persists(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    s = serve(ACCOUNT, data=tmp_path / "keep")
    post(f"{s.urls[0]}/accounts/eve/deposit", 5)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0
    s2 = serve(ACCOUNT, data=tmp_path / "keep")
    assert httpx.get(f"{s2.urls[0]}/accounts/eve").json()["balance"] == 5


NAPPER_APP = """
import asyncio
from fastactor import Response, StatefulActor

class Napper(StatefulActor):
    async def nap(self, t):
        await asyncio.sleep(t)
        return t

async def fetch(request, env):
    return Response.json(await env.NAPPER.id_from_name("one").nap(2))
"""


def test_sigterm_exits_0_with_calls_queued_behind_a_turn(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # Three requests on one instance, each waiting 2 s for it; fetch gives up after 1 s
    # (504), so the drain finds its requests done while the instance still runs one call
    # with two queued behind it. serve used to wait on those two for ever.
    d = function_dir(tmp_path, "nap", NAPPER_APP, {"NAPPER": "Napper"})
    s = serve(d, workers=1, extra=("--fetch-timeout", "1"))

    def get(_: int) -> int:
        return httpx.get(s.urls[0], timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        codes = pool.map(get, range(3))
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(20) == 0
        assert sorted(codes) == [504, 504, 504]


RELAY_APP = """
import asyncio, time
from fastactor import Response, StatefulActor

class Relay(StatefulActor):
    async def arm(self, partner):
        await self.ctx.storage.put("partner", partner)
        await self.ctx.storage.set_alarm(time.time() * 1000)
        return "armed"

    async def alarm(self, info):
        await asyncio.sleep(1.5)
        partner = await self.ctx.storage.get("partner")
        await self.ctx.storage.put("done", await self.env.RELAY.id_from_name(partner).bump())

    async def bump(self):
        n = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", n)
        return n

async def fetch(request, env):
    _, name, partner = request.path.split("/")
    return Response.json(await env.RELAY.id_from_name(name).arm(partner))
"""


def test_sigterm_lets_running_alarms_finish_their_calls_to_other_workers(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # Twelve alarms, each running when SIGTERM comes, that go on to call another instance
    # (most likely on the other worker for some of them) and store its answer. The workers
    # keep answering each other's calls until every running turn is done: before, they
    # closed their channels once the HTTP requests were done, and each such alarm failed
    # ("worker N does not answer"), to run again after the restart.
    d = function_dir(tmp_path, "relay", RELAY_APP, {"RELAY": "Relay"})
    data = tmp_path / "relay-data"
    s = serve(d, data=data)
    for i in range(12):
        assert httpx.get(f"{s.urls[0]}/s{i}/p{i}").json() == "armed"
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0
    time.sleep(0.2)  # the log lines the drain thread still reads
    assert not [x for x in s.lines if "alarm failed" in x], "".join(s.lines)
    shown = run_cli("actors", "inspect", "Relay", "--data", str(data)).stdout
    stored = {x["id"]: x["storage"] for x in map(json.loads, shown.splitlines())}
    for i in range(12):
        assert stored[f"s{i}"]["done"] == 1 and stored[f"p{i}"]["n"] == 1, stored


SLOW_ALARM_APP = """
import asyncio, os, time
from fastactor import Response, StatefulActor

class Slow(StatefulActor):
    async def arm(self, flag):
        await self.ctx.storage.put("flag", flag)
        await self.ctx.storage.set_alarm(time.time() * 1000)
        return "armed"

    async def alarm(self, info):
        await self.ctx.storage.put("runs", (await self.ctx.storage.get("runs") or 0) + 1)
        while os.path.exists(await self.ctx.storage.get("flag")):
            await asyncio.sleep(0.05)

    async def runs(self):
        return [await self.ctx.storage.get("runs"), await self.ctx.storage.get_alarm()]

async def fetch(request, env):
    slow = env.SLOW.id_from_name("s")
    if request.path == "/arm":
        return Response.json(await slow.arm(request.query["flag"]))
    return Response.json(await slow.runs())
"""


def serve_slow_alarm(
    serve: Callable[..., Server], tmp_path: Path, **kw: Any
) -> tuple[Server, Path, Path]:
    """serve (with KW) of SLOW_ALARM_APP, its alarm armed and running until FLAG is removed
    half a second later: (server, function directory, FLAG)."""
    d = function_dir(tmp_path, "slow", SLOW_ALARM_APP, {"SLOW": "Slow"})
    flag = tmp_path / "hold"
    flag.touch()
    s = serve(d, **kw)
    assert httpx.get(f"{s.urls[0]}/arm", params={"flag": str(flag)}).json() == "armed"
    time.sleep(0.5)
    return s, d, flag


def test_sigterm_stops_turns_still_running_at_the_shutdown_timeout(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # An alarm that runs on (its 15 min budget) while FLAG exists. With --shutdown-timeout
    # 1, SIGTERM stops it a second in: serve exits 0 at once, the run's write is dropped,
    # and the alarm stays stored, to run after the next start. Before, serve waited 60 s
    # for it, then 60 s more, then killed the worker and exited 1.
    data = tmp_path / "slow-data"
    s, d, flag = serve_slow_alarm(serve, tmp_path, data=data, extra=("--shutdown-timeout", "1"))
    began = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    assert time.monotonic() - began < 20
    time.sleep(0.2)  # the log lines the drain thread still reads
    assert [x for x in s.lines if "stopped 1 turns still running" in x], "".join(s.lines)
    shown = run_cli("actors", "inspect", "Slow", "--data", str(data)).stdout
    assert "runs" not in json.loads(shown)["storage"]
    flag.unlink()
    s = serve(d, data=data)
    deadline = time.monotonic() + 10
    while (got := httpx.get(f"{s.urls[0]}/runs").json()) != [1, None]:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_a_second_ctrl_c_stops_turns_still_running_at_once(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # Ctrl-C in a terminal signals the whole process group, serve and its workers. The
    # first drains with the default --shutdown-timeout (90 s); a second one stops the alarm
    # still running at once, and serve exits 0. Before, it changed nothing.
    s, _, flag = serve_slow_alarm(serve, tmp_path)
    os.killpg(s.proc.pid, signal.SIGINT)
    time.sleep(1)
    assert s.proc.poll() is None  # still draining: the alarm runs on
    began = time.monotonic()
    os.killpg(s.proc.pid, signal.SIGINT)
    assert s.proc.wait(30) == 0
    assert time.monotonic() - began < 10
    time.sleep(0.2)  # the log lines the drain thread still reads
    assert [x for x in s.lines if "stopped 1 turns still running" in x], "".join(s.lines)
    flag.unlink()


def test_workers_of_a_killed_supervisor_stop_turns_at_the_shutdown_timeout(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # With the supervisor gone, a worker's running alarm gets until --shutdown-timeout too:
    # before, the worker waited for it (up to the alarm's 15 min budget), serving nothing.
    s, _, flag = serve_slow_alarm(serve, tmp_path, extra=("--shutdown-timeout", "1"))
    workers = s.workers()
    os.kill(s.proc.pid, signal.SIGKILL)
    deadline = time.time() + 20
    while any(running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(running(w) for w in workers)
    flag.unlink()


SLOW_FETCH_APP = """
import asyncio
from fastactor import Response

async def fetch(request, env):
    await asyncio.sleep(float(request.query["s"]))
    return Response.text("slept")
"""


def test_sigterm_answers_requests_still_running_at_the_shutdown_timeout_503(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # A fetch that would take 20 s (under its 30 s budget) when SIGTERM comes, with
    # --shutdown-timeout 1: its client gets a 503 with Retry-After a second later, not a
    # connection closed without an answer; serve exits 0.
    d = function_dir(tmp_path, "nap", SLOW_FETCH_APP)
    s = serve(d, extra=("--shutdown-timeout", "1"))
    quick = httpx.get(s.urls[0], params={"s": "0"})
    assert quick.text == "slept"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, s.urls[0], params={"s": "20"}, timeout=30)
        time.sleep(0.5)
        began = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        r = slow.result()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["message"] == "the server is shutting down"
        assert r.headers["connection"] == "close"
        assert s.proc.wait(30) == 0
        assert time.monotonic() - began < 10


def test_requests_pipelined_behind_one_running_at_the_shutdown_timeout_are_answered_503(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # They never ran: each gets its 503 with Retry-After, in order, a HEAD's without a
    # body, and the last answer closes the connection. Before, they went unanswered.
    d = function_dir(tmp_path, "nap", SLOW_FETCH_APP)
    s = serve(d, workers=1, extra=("--shutdown-timeout", "1"))
    port = int(s.urls[0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(
            b"GET /?s=20 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"HEAD /?s=0 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /?s=0 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        )
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        got = b""
        while chunk := c.recv(65536):
            got += chunk
    heads = re.findall(rb"HTTP/1\.1 (\d+) [^\r]*\r\n((?:[^\r]+\r\n)*)\r\n", got)
    assert [h[0] for h in heads] == [b"503", b"503", b"503"], got
    assert all(b"retry-after: 1" in h[1] for h in heads), got
    assert [b"connection: close" in h[1] for h in heads] == [False, False, True], got
    body = b'{"error":"Service Unavailable","message":"the server is shutting down"}'
    assert got.count(body) == 2, got  # the GET's and the POST's, not the HEAD's
    assert s.proc.wait(30) == 0


STUCK_APP = """
import asyncio
from fastactor import Response, StatefulActor

async def wait_catching_cancellation():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

class Stuck(StatefulActor):
    async def hold(self):
        await self.ctx.storage.put("held", 1)
        await wait_catching_cancellation()

async def fetch(request, env):
    if request.path == "/fetch":
        await wait_catching_cancellation()
    return Response.json(await env.STUCK.id_from_name("s").hold())
"""


def test_code_that_catches_its_cancellation_does_not_hold_the_shutdown(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # A method and a fetch that catch the cancellation the --shutdown-timeout deadline
    # sends them and go on waiting. A few seconds later they are left behind: the worker
    # closes its log and exits, and serve exits 0, the method's write dropped. Before, the
    # supervisor waited a minute more for the worker, then killed it and exited 1.
    data = tmp_path / "stuck-data"
    d = function_dir(tmp_path, "stuck", STUCK_APP, {"STUCK": "Stuck"})
    s = serve(d, data=data, workers=1, extra=("--shutdown-timeout", "1"))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = [
            pool.submit(httpx.get, f"{s.urls[0]}{path}", timeout=60) for path in ("/", "/fetch")
        ]
        time.sleep(0.5)
        began = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert [r.result().status_code for r in replies] == [503, 503]
        assert s.proc.wait(60) == 0
        assert time.monotonic() - began < 20
    time.sleep(0.2)  # the log lines the drain thread still reads
    said = "".join(s.lines)
    assert "its call of hold() went on 5 s after it was cancelled" in said, said
    assert "tasks still ran at exit" in said, said
    shown = run_cli("actors", "instances", "Stuck", "--data", str(data))
    assert shown.returncode == 1 and "no stored instances of Stuck" in shown.stderr


def test_shutdown_timeout_must_be_a_number_of_seconds(tmp_path: Path) -> None:
    for bad in ("-1", "nan", "1e9"):
        p = run_cli("serve", str(ACCOUNT), "--shutdown-timeout", bad, "--data", str(tmp_path))
        assert p.returncode == 2
        assert "--shutdown-timeout must be between 0 and 86400 seconds" in p.stderr


def test_a_data_directory_too_deep_for_unix_sockets_serves(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # DATA/run/worker-1.sock would not fit a Unix socket's path (108 bytes): the workers'
    # call sockets go to a private directory of their own, removed when serve exits.
    data = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(data / "run" / "worker-1.sock")) > 108
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("fastactor-*"))
    admin = free_ports(1)
    s = serve(ACCOUNT, data=data, extra=("--admin-port", str(admin)))
    (url,) = s.urls
    (sockets,) = set(tmp.glob("fastactor-*")) - before
    assert sockets.name.startswith(f"fastactor-{os.getuid()}-")
    assert sorted(p.name for p in sockets.iterdir()) == ["worker-0.sock", "worker-1.sock"]
    assert sockets.stat().st_mode & 0o777 == 0o700
    for i in range(20):  # about half of them owned by the other worker: forwarded
        assert post(f"{url}/accounts/deep{i}/deposit", i).json()["balance"] == i
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
    assert 'fastactor_http_requests_total{worker="1"}' in metrics
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    assert not sockets.exists()
    # After a kill -9 the directory stays; the next serve of DATA takes it again.
    s = serve(ACCOUNT, data=data)
    (url,) = s.urls
    for i in range(20):
        assert httpx.get(f"{url}/accounts/deep{i}").json()["balance"] == i
    os.killpg(s.proc.pid, signal.SIGKILL)
    s.proc.wait(30)
    assert sockets.exists()
    s = serve(ACCOUNT, data=data)
    assert set(tmp.glob("fastactor-*")) - before == {sockets}
    assert httpx.get(f"{s.urls[0]}/accounts/deep3").json()["balance"] == 3
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    assert not sockets.exists()


def test_sigterm_while_a_worker_waits_to_restart_exits_0(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    s = serve(ACCOUNT)
    post(f"{s.urls[0]}/accounts/eve/deposit", 5)
    # A worker that dies again and again is started again after a growing delay; the others
    # keep being watched meanwhile, and a SIGTERM then drains at once and exits 0 (the
    # worker that was down had nothing to drain).
    for n in range(1, 4):
        victim = max(s.workers())  # the same worker each time: the newest process
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 30
        while "".join(s.lines).count("restarting") < n:
            assert time.time() < deadline, s.lines
            time.sleep(0.02)
        if n < 3:
            while victim in s.workers() or len(s.workers()) < 2:
                assert time.time() < deadline, s.lines
                time.sleep(0.05)
    assert "restarting in 0.8 s" in "".join(s.lines), s.lines
    started = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0, s.lines
    assert time.monotonic() - started < 10
    s2 = serve(ACCOUNT, data=tmp_path / "data")
    assert httpx.get(f"{s2.urls[0]}/accounts/eve").json()["balance"] == 5


def test_a_killed_worker_is_restarted_with_its_instances(serve: Callable[..., Server]) -> None:
    s = serve(ACCOUNT)
    (url,) = s.urls
    for i in range(10):
        post(f"{url}/accounts/w{i}/deposit", 10 + i)
    victim = s.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if "restarting" in "".join(s.lines) and len(s.workers()) == 2:
            break
        time.sleep(0.1)
    assert victim not in s.workers()
    for i in range(10):
        for _ in range(100):
            try:
                r = httpx.get(f"{url}/accounts/w{i}", timeout=30)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.json()["balance"] == 10 + i


async def _deposit_load(url: str, stop: float, acked: dict[str, int]) -> None:
    """32 clients depositing 1 into 8 accounts until STOP (or until the server dies);
    ACKED keeps the highest balance each account acknowledged."""
    async with httpx.AsyncClient(timeout=30) as c:

        async def one(k: int) -> None:
            name = f"c{k % 8}"
            while time.time() < stop:
                r = await c.post(f"{url}/accounts/{name}/deposit", json={"amount": 1})
                acked[name] = max(acked.get(name, 0), r.json()["balance"])

        await asyncio.gather(*(one(k) for k in range(32)), return_exceptions=True)


def test_kill_9_of_the_tree_under_load_keeps_acked_writes(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "crash"
    acked: dict[str, int] = {}
    for cycle in range(3):
        s = serve(ACCOUNT, data=data)
        (url,) = s.urls
        stop = time.time() + 5

        t = threading.Thread(target=asyncio.run, args=(_deposit_load(url, stop, acked),))
        t.start()
        time.sleep(0.3 + 0.3 * cycle)
        os.killpg(s.proc.pid, signal.SIGKILL)  # under load: requests are in flight
        s.proc.wait(30)
        t.join(60)
        s2 = serve(ACCOUNT, data=data)
        for name, total in acked.items():
            got = httpx.get(f"{s2.urls[0]}/accounts/{name}").json()["balance"]
            assert got >= total, f"cycle {cycle}: {name} lost acknowledged deposits"
        os.killpg(s2.proc.pid, signal.SIGKILL)
        s2.proc.wait(30)
    assert acked


def test_new_scaffolds_functions_that_serve_as_is(
    serve: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout == f"fastactor {fastactor.__version__}\n"
    assert run_cli("new", "plain").returncode == 0
    assert run_cli("new", "counting", "--actor").returncode == 0
    assert run_cli("new", "counting").returncode == 2  # not over an existing one
    assert run_cli("new", "Bad_Name").returncode == 2
    plain, counting = serve(tmp_path / "plain", tmp_path / "counting").urls
    assert httpx.get(f"{plain}/x").json() == {"function": "plain", "path": "/x"}
    assert httpx.post(f"{counting}/counters/a").json() == {"counter": "a", "value": 1}
    assert httpx.post(f"{counting}/counters/a").json()["value"] == 2
    assert httpx.get(f"{counting}/counters/a").json()["value"] == 2
    assert httpx.post(f"{counting}/counters/zo%C3%AB").json() == {"counter": "zoë", "value": 1}
    assert httpx.get(f"{counting}/counters/zo%FF").status_code == 400
    assert httpx.get(f"{counting}/counters/{'n' * 3000}").status_code == 400
    r = httpx.delete(f"{counting}/counters/a")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD, POST")
    assert httpx.get(f"{counting}/counters/a").json()["value"] == 2


def test_max_resident_bounds_each_workers_instances(serve: Callable[..., Server]) -> None:
    admin = free_ports(1)
    srv = serve(ACCOUNT, extra=("--admin-port", str(admin), "--max-resident", "5"))
    (url,) = srv.urls
    with httpx.Client(timeout=30) as c:
        for i in range(40):
            assert c.post(f"{url}/accounts/r{i}/deposit", json={"amount": i}).status_code == 200
        text = c.get(f"http://127.0.0.1:{admin}/metrics").text
        resident = [
            int(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("fastactor_instances_resident{")
        ]
        evicted = sum(
            int(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("fastactor_evictions_total{")
        )
        assert len(resident) == 2 and max(resident) <= 5 and evicted >= 30, text
        # Evicted, not lost: each comes back with what it stored.
        for i in range(40):
            assert c.get(f"{url}/accounts/r{i}").json()["balance"] == i


BLOB_APP = """
from fastactor import Response, StatefulActor

class Blob(StatefulActor):
    async def put(self, n):
        await self.ctx.storage.put("v", b"x" * n)

    async def size(self):
        return len(await self.ctx.storage.get("v", b""))

async def fetch(request, env):
    blob = env.BLOB.id_from_name(request.path.strip("/"))
    if request.method == "POST":
        await blob.put(10_000)
    return Response.json(await blob.size())
"""


def test_max_cache_memory_bounds_the_values_each_worker_caches(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    d = function_dir(tmp_path, "blob", BLOB_APP, {"BLOB": "Blob"})
    admin = free_ports(1)
    srv = serve(d, extra=("--admin-port", str(admin), "--max-cache-memory", "50k"))
    (url,) = srv.urls
    with httpx.Client(timeout=30) as c:
        for i in range(40):  # 400 KB of values
            assert c.post(f"{url}/b{i}").json() == 10_000
        text = c.get(f"http://127.0.0.1:{admin}/metrics").text

        def values(name: str) -> list[int]:
            return [int(x.split()[-1]) for x in text.splitlines() if x.startswith(name + "{")]

        cached = values("fastactor_cache_bytes")
        assert len(cached) == 2 and max(cached) <= 50 * 1024, text
        assert sum(values("fastactor_evictions_total")) >= 20, text
        # Evicted, not lost.
        for i in range(40):
            assert c.get(f"{url}/b{i}").json() == 10_000


def test_admin_port_health_and_metrics(serve: Callable[..., Server]) -> None:
    admin = free_ports(1)
    srv = serve(ACCOUNT, extra=("--admin-port", str(admin)))
    (url,) = srv.urls
    base = f"http://127.0.0.1:{admin}"
    # Printed after the functions' lines, without their arrow (scripts read those).
    deadline = time.time() + 10
    while not any(x.startswith("admin: ") for x in srv.lines) and time.time() < deadline:
        time.sleep(0.01)
    (line,) = [x for x in srv.lines if x.startswith("admin: ")]
    assert line.split() == ["admin:", f"{base}/health/readiness,", f"{base}/metrics"]
    live = httpx.get(f"{base}/health/liveness")
    assert live.status_code == 200
    assert live.headers["server"] == f"fastactor/{fastactor.__version__}"
    assert httpx.get(f"{base}/health/readiness").status_code == 200
    for i in range(6):
        post(f"{url}/accounts/m{i}/deposit", 1)
    # A scrape counts every request answered before it (the workers are asked, not polled).
    text = httpx.get(f"{base}/metrics").text

    def total(name: str) -> int:
        return sum(
            int(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")
        )

    assert total("fastactor_turns_total") == 6
    assert total("fastactor_http_requests_total") == 6
    assert total("fastactor_commits_total") == 6
    assert total("fastactor_instances_resident") == 6
    assert 'fastactor_fsync_seconds_bucket{worker="0",le="+Inf"}' in text
    assert "fastactor_instances_resident" in text and "fastactor_log_bytes_total" in text
    assert total("fastactor_http_request_duration_seconds_count") == 6
    # Refusals count by class too; only requests that ran fetch have a duration.
    assert httpx.get(f"{url}/nope").status_code == 404  # fetch's own 404
    assert post(f"{url}/accounts/m0/deposit", "x").status_code == 400  # fetch's 400
    assert raw(url, b"nonsense\r\n\r\n").split()[1] == b"400"  # the front's refusal
    text = httpx.get(f"{base}/metrics").text

    def by_label(name: str, label: str) -> dict[str, int]:
        got: dict[str, int] = {}
        for line in text.splitlines():
            m = re.fullmatch(
                rf'{name}\{{worker="\d+",function="account",{label}="([^"]+)"\}} (\d+)', line
            )
            if m:
                got[m.group(1)] = got.get(m.group(1), 0) + int(m.group(2))
        return got

    assert by_label("fastactor_http_responses_total", "code") == {
        "2xx": 6,
        "3xx": 0,
        "4xx": 3,
        "5xx": 0,
    }
    buckets = by_label("fastactor_http_request_duration_seconds_bucket", "le")
    assert buckets["+Inf"] == total("fastactor_http_request_duration_seconds_count") == 8
    counts = [buckets[le] for le in sorted(buckets, key=lambda le: float(le))]
    assert counts == sorted(counts) and len(counts) == 15  # cumulative, 14 bounds and +Inf
    seconds = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("fastactor_http_request_duration_seconds_sum{")
    )
    assert 0 < seconds < 8 * 10
    assert httpx.get(f"{base}/nope").status_code == 404
    assert httpx.get(f"{base}/health/readiness?probe=1").status_code == 200
    head = httpx.head(f"{base}/metrics")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"])
    # Refusals are short text, never the standard library's HTML error page.
    r = httpx.post(f"{base}/metrics")
    assert (r.status_code, r.headers["allow"], r.text) == (
        405,
        "GET, HEAD",
        "method not allowed: GET or HEAD\n",
    )
    for request, status in (
        (b"BREW /metrics HTTP/1.1\r\n\r\n", b"501"),
        (b"nonsense\r\n\r\n", b"400"),
    ):
        answer = raw(base, request)
        assert answer.split()[1] == status and b"text/plain" in answer and b"<" not in answer


def test_metrics_count_the_calls_forwarded_between_workers(serve: Callable[..., Server]) -> None:
    admin = free_ports(1)
    srv = serve(ACCOUNT, extra=("--admin-port", str(admin)))
    (url,) = srv.urls

    def scrape() -> dict[str, list[int]]:
        got: dict[str, list[int]] = {}
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        for line in text.splitlines():
            m = re.fullmatch(r'(fastactor_\w+)\{worker="(\d)"\} (\d+)', line)
            if m:
                got.setdefault(m.group(1), [0, 0])[int(m.group(2))] = int(m.group(3))
        return got

    before = scrape()
    names = [f"fw{i}" for i in range(24)]
    with httpx.Client() as client:  # one connection: one worker runs every fetch
        for name in names:
            r = client.post(f"{url}/accounts/{name}/deposit", json={"amount": 1})
            assert r.status_code == 200
    after = scrape()

    def delta(name: str) -> list[int]:
        return [after[name][w] - before[name][w] for w in (0, 1)]

    requests = delta("fastactor_http_requests_total")
    front = requests.index(len(names))
    assert requests[1 - front] == 0
    crossing = sum(owner_of("default", "Account", n, 2) != front for n in names)
    assert 0 < crossing < len(names)
    assert delta("fastactor_forwarded_calls_total")[front] == crossing
    assert delta("fastactor_forwarded_calls_total")[1 - front] == 0
    assert delta("fastactor_served_calls_total")[front] == 0
    assert delta("fastactor_served_calls_total")[1 - front] == crossing
    # Each call frame out of the front, each reply frame back, and each worker's answer to
    # the first scrape; one call in flight at a time, so every frame had a write of its own.
    assert delta("fastactor_channel_frames_total") == [crossing + 1, crossing + 1]
    assert delta("fastactor_channel_writes_total") == [crossing + 1, crossing + 1]


def test_metrics_of_a_worker_stuck_in_a_call_are_its_last_counters(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    d = function_dir(
        tmp_path,
        "stuck",
        "import time\n"
        "from fastactor import Response\n"
        "async def fetch(request, env):\n"
        "    if request.path == '/block':\n"
        "        time.sleep(3)  # holds the worker's event loop\n"
        "    return Response.text('ok')\n",
    )
    admin = free_ports(1)
    (url,) = serve(d, workers=1, extra=("--admin-port", str(admin))).urls

    def requests_total() -> int:
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        (line,) = [x for x in text.splitlines() if x.startswith("fastactor_http_requests_total{")]
        return int(line.split()[-1])

    assert httpx.get(f"{url}/").text == "ok"
    assert requests_total() == 1
    blocked = threading.Thread(target=lambda: httpx.get(f"{url}/block", timeout=30))
    blocked.start()
    time.sleep(0.5)
    # The worker can not answer; the scrape does not wait for it, and shows what it last said.
    assert requests_total() == 1
    assert blocked.is_alive()
    blocked.join()
    assert requests_total() == 2


def test_fetch_errors_and_timeouts_become_statuses(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    d = function_dir(
        tmp_path,
        "slow",
        "import asyncio\n"
        "from fastactor import Response\n"
        "async def fetch(request, env):\n"
        "    if request.path == '/boom':\n"
        "        raise KeyError('secret detail')\n"
        "    if request.path == '/slow':\n"
        "        await asyncio.sleep(float(request.query['t']))\n"
        "    return Response.text('ok')\n",
    )
    import fastactor.server.http as h

    assert h.Limits().fetch_timeout == 30.0
    (url,) = serve(d).urls
    r = httpx.get(f"{url}/boom")
    assert r.status_code == 500 and r.json()["error"] == "KeyError"
    assert "Traceback" not in r.text
    assert httpx.get(f"{url}/slow?t=0.01").text == "ok"
    with httpx.Client(timeout=60) as c:  # keep-alive survives both
        assert c.get(f"{url}/boom").status_code == 500
        assert c.get(f"{url}/x").text == "ok"


def test_actors_commands_show_what_is_stored(serve: Callable[..., Server], tmp_path: Path) -> None:
    data = tmp_path / "inspect"
    s = serve(ACCOUNT, data=data)
    for i in range(5):
        post(f"{s.urls[0]}/accounts/n{i}/deposit", 10 * i + 1)
    # While the server runs (log tails, no lock), then after it stopped (snapshots).
    for _ in range(2):
        p = run_cli("actors", "list", "--data", str(data))
        assert p.returncode == 0 and p.stdout.split("\t")[0] == "Account"
        assert "5 instances" in p.stdout
        p = run_cli("actors", "instances", "Account", "--data", str(data))
        assert p.stdout.split() == [f"n{i}" for i in range(5)]
        p = run_cli("actors", "inspect", "Account", "--data", str(data))
        assert '{"id": "n3", "storage": {"balance": 31}}' in p.stdout
        # Some instances only, whichever worker holds them, in name order.
        p = run_cli("actors", "inspect", "Account", "n4", "n0", "n9", "--data", str(data))
        assert [json.loads(line) for line in p.stdout.splitlines()] == [
            {"id": "n0", "storage": {"balance": 1}},
            {"id": "n4", "storage": {"balance": 41}},
        ]
        p = run_cli("actors", "inspect", "Account", "n9", "--data", str(data))
        assert p.returncode == 1 and "no stored instances of Account named 'n9'" in p.stderr
        # Every shard read whole: the log's records past the snapshot while it runs, after
        # the stop only the snapshot (the stop checkpoints), one balance per account.
        p = run_cli("actors", "check", "--data", str(data))
        lines = p.stdout.splitlines()
        assert p.returncode == 0 and len(lines) == 2, p
        found = [
            re.fullmatch(
                r"(?:\S+/)?shard-\d: ok: snapshot of (\d) values? through LSN \d+, "
                r"then (\d) log records?",
                line,
            )
            for line in lines
        ]
        assert all(found), lines
        if s.proc.poll() is not None:
            assert sum(int(m[1]) for m in found if m) == 5
            assert all(m[2] == "0" for m in found if m)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
    assert run_cli("actors", "instances", "Nope", "--data", str(data)).returncode == 1
    assert run_cli("actors", "list", "--data", str(tmp_path / "missing")).returncode == 2


def test_actors_commands_name_the_types_of_other_accounts(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    d = tmp_path / "acme"
    d.mkdir()
    (d / "app.py").write_text(
        "from fastactor import Response, StatefulActor\n"
        "class Widget(StatefulActor):\n"
        "    async def set(self, v):\n"
        "        await self.ctx.storage.put('v', v)\n"
        "async def fetch(request, env):\n"
        "    await env.W.id_from_name('w1').set(5)\n"
        "    return Response.text('ok')\n"
    )
    (d / "fastactor.toml").write_text(
        'name = "acme"\nmain = "app.py"\naccount = "acme"\n'
        '[[actors]]\nbinding = "W"\ntype = "Widget"\n'
    )
    data = tmp_path / "data"
    s = serve(d, data=data)
    assert httpx.get(s.urls[0] + "/").text == "ok"
    p = run_cli("actors", "instances", "acme/Widget", "--data", str(data))
    assert p.returncode == 0 and p.stdout.split() == ["w1"]
    p = run_cli("actors", "instances", "Widget", "--data", str(data))
    assert p.returncode == 1 and "stored under another account: acme/Widget" in p.stderr


class Odd(StatefulActor):
    async def fill(self) -> None:
        s = self.ctx.storage
        await s.put("bytes", b"\x00\xff")
        await s.put("nan", float("nan"))
        await s.put("keys", {(1, 2): "tuple key", 3: [float("inf"), (4, "x")], "k": {5}})
        await s.put("when", datetime.date(2026, 11, 24))
        await s.put("plain", {"a": [1, 2.5, None, True]})


def test_inspect_prints_strict_json_whatever_is_stored(tmp_path: Path) -> None:
    async def go() -> None:
        async with Runtime(tmp_path / "rt", [Odd]) as rt:
            await rt.namespace("Odd").id_from_name("o").fill()

    uvloop.run(go())
    p = run_cli("actors", "inspect", "Odd", "--data", str(tmp_path / "rt"))
    assert p.returncode == 0, p.stderr

    def no_constants(c: str) -> None:
        raise AssertionError(f"not strict JSON: {c}")

    shown = json.loads(p.stdout, parse_constant=no_constants)
    assert shown == {
        "id": "o",
        "storage": {
            "bytes": repr(b"\x00\xff"),
            "keys": {"(1, 2)": "tuple key", "3": ["inf", [4, "x"]], "k": "{5}"},
            "nan": "nan",
            "plain": {"a": [1, 2.5, None, True]},
            "when": "datetime.date(2026, 11, 24)",
        },
    }


def test_other_worker_counts_move_the_instances(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "moving"
    names = [f"m{i}" for i in range(40)]
    s = serve(ACCOUNT, data=data, workers=2)
    expected = {n: i + 1 for i, n in enumerate(names)}
    for n, amount in expected.items():
        assert post(f"{s.urls[0]}/accounts/{n}/deposit", amount).status_code == 200
    for workers in (3, 1, 2):
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
        (data / "gen-99").mkdir()  # what a move cut short would leave
        s = serve(ACCOUNT, data=data, workers=workers)
        assert any("moving instances" in line for line in s.lines), s.lines
        assert not (data / "gen-99").exists()
        (url,) = s.urls
        for n in names:
            assert httpx.get(f"{url}/accounts/{n}").json()["balance"] == expected[n], workers
            assert post(f"{url}/accounts/{n}/deposit", 1).status_code == 200
            expected[n] += 1
    listed = run_cli("actors", "instances", "Account", "--data", str(data)).stdout.split()
    assert sorted(listed) == sorted(names)
    kept = sorted(p.name for p in data.iterdir() if p.name.startswith(("gen-", "shard-")))
    assert kept == ["gen-3"]


def test_a_damaged_layout_stops_start_up(serve: Callable[..., Server], tmp_path: Path) -> None:
    data = tmp_path / "bad-layout"
    data.mkdir()
    (data / "layout.json").write_text("{not json")
    r = run_cli("serve", str(ACCOUNT), "--data", str(data), "--port", str(free_ports(1)))
    assert r.returncode == 2 and "layout.json" in r.stderr


def test_a_damaged_shard_stops_start_up_and_check_finds_it(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "damaged"
    s = serve(ACCOUNT, data=data)
    for i in range(10):  # names on both workers
        post(f"{s.urls[0]}/accounts/d{i}/deposit", i + 1)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0  # checkpointed: every balance in a snapshot
    snapshot = data / "shard-1" / "state.sqlite3"
    db = sqlite3.connect(snapshot)
    (inst, blob) = db.execute("SELECT inst, value FROM kv LIMIT 1").fetchone()
    db.execute("UPDATE kv SET value = ? WHERE inst = ?", (bytes([blob[0] ^ 1]) + blob[1:], inst))
    db.commit()
    db.close()
    r = run_cli("serve", str(ACCOUNT), "--data", str(data), "--port", str(free_ports(1)))
    assert r.returncode == 1
    assert f"worker 1: {snapshot}: the stored value of key 'balance' of Account" in r.stderr
    assert f"`fastactor actors check --data {data}` checks every shard" in r.stderr
    r = run_cli("actors", "check", "--data", str(data))
    assert r.returncode == 1 and r.stderr == "fastactor: 1 of 2 shards damaged\n"
    assert r.stdout.startswith("shard-0: ok: snapshot of ")
    assert f"shard-1: DAMAGED: {snapshot}: the stored value of key 'balance'" in r.stdout


def _nofile(pid: int) -> int:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


def test_the_open_files_limit_is_raised_or_the_connection_cap_fits_it(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    # A soft limit under the hard one (1,024 is common): raised for the 10,000 connections.
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 20_000)
    srv = serve(ACCOUNT, workers=1, nofile=(256, hard))
    want = min(11_024, hard)
    assert _nofile(srv.proc.pid) == want and [_nofile(w) for w in srv.workers()] == [want]
    # A hard limit of 300: the worker takes 225 connections (a quarter of the descriptors
    # stay for its logs and channels) and answers 503 past them, instead of leaving clients
    # unanswered once accept() fails; start-up says so.
    srv = serve(ACCOUNT, workers=1, nofile=(300, 300), data=tmp_path / "small")
    assert "open files limit (ulimit -n) is 300" in "".join(srv.lines), srv.lines
    host, port = srv.urls[0].removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(225):
            s = socket.create_connection((host, int(port)), timeout=10)
            held.append(s)
        s = held[0]
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")  # the first ones are served
        for _ in range(20):
            extra = socket.create_connection((host, int(port)), timeout=10)
            extra.settimeout(10)
            assert extra.recv(4096).startswith(b"HTTP/1.1 503 "), "no answer past the cap"
            extra.close()
    finally:
        for s in held:
            s.close()
    assert httpx.get(f"{srv.urls[0]}/health").status_code == 200


# Added to the `fastactor new NAME --actor` scaffold: a route that makes the disk fail this
# worker's next fdatasync (through the log's test hook).
BREAK_ROUTE = """

import errno as _errno
import gc as _gc

from fastactor._core import WriteAheadLog as _WriteAheadLog

_scaffold_fetch = fetch


async def fetch(request, env):
    if request.path == "/break":
        for o in _gc.get_objects():
            if type(o) is _WriteAheadLog and not o.closed:
                o._inject_fault("fdatasync", 0, _errno.EIO)
        return Response.text("armed")
    return await _scaffold_fetch(request, env)
"""


def test_a_worker_whose_log_fails_is_restarted_and_recovers(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    made = subprocess.run(["fastactor", "new", "failing", "--actor"], cwd=tmp_path)
    assert made.returncode == 0
    fn = tmp_path / "failing"
    (fn / "app.py").write_text((fn / "app.py").read_text() + BREAK_ROUTE)
    srv = serve(fn, workers=1)
    url = srv.urls[0]
    (pid,) = srv.workers()
    acked = 0
    for _ in range(5):
        assert httpx.post(f"{url}/counters/c").status_code == 200
        acked += 1
    assert httpx.post(f"{url}/break").text == "armed"
    # The write that meets the failed fdatasync is refused (never acknowledged) ...
    r = httpx.post(f"{url}/counters/c")
    assert r.status_code == 500 and r.json()["error"] == "ActorOutputGateError", r.text
    # ... and the worker goes, is started again and recovers: every acknowledged write is
    # there (the refused one may be too: its record reached the file, only its fdatasync
    # failed), and writes succeed again.
    deadline = time.time() + 30
    while True:
        try:
            r = httpx.get(f"{url}/counters/c", timeout=5)
            if r.status_code == 200 and srv.workers() and srv.workers() != [pid]:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, srv.lines
        time.sleep(0.1)
    n = r.json()["value"]
    assert n in (acked, acked + 1)
    assert httpx.post(f"{url}/counters/c").json()["value"] == n + 1
    assert any("its log failed" in x for x in srv.lines), srv.lines
    assert any("worker 0 exited (3); restarting" in x for x in srv.lines), srv.lines


STALL_APP = """
import time
from fastactor import Response, StatefulActor

class Box(StatefulActor):
    async def put(self, v):
        await self.ctx.storage.put("v", v)
        return v

    async def get(self):
        return await self.ctx.storage.get("v")

    async def spin(self):
        while True:  # never awaits: holds its worker's event loop
            pass

async def fetch(request, env):
    box = env.BOX.id_from_name("b")
    if request.path == "/put":
        return Response.json(await box.put(int(request.query["v"])))
    if request.path == "/spin":
        return Response.json(await box.spin())
    if request.path == "/sleep":
        time.sleep(float(request.query["s"]))
        return Response.text("slept")
    return Response.json(await box.get())
"""


def test_a_worker_whose_event_loop_stalls_is_restarted(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    d = function_dir(tmp_path, "stall", STALL_APP, {"BOX": "Box"})
    admin = free_ports(1)
    extra = ("--admin-port", str(admin), "--stall-timeout", "4")
    srv = serve(d, workers=2, extra=extra)
    (url,) = srv.urls
    ready = f"http://127.0.0.1:{admin}/health/readiness"
    assert httpx.get(f"{url}/put?v=7").json() == 7
    before = set(srv.workers())
    spun: list[object] = []

    def spin() -> None:
        try:
            spun.append(httpx.get(f"{url}/spin", timeout=60))
        except httpx.HTTPError as e:
            spun.append(e)

    t = threading.Thread(target=spin)
    t.start()
    # The owner's loop stops: readiness says so after 2 s, and names the worker ...
    deadline = time.time() + 4
    while (r := httpx.get(ready)).status_code == 200:
        assert time.time() < deadline, srv.lines
        time.sleep(0.1)
    assert r.status_code == 503 and "event loop has not run" in r.text, r.text
    # ... and after --stall-timeout the worker is killed, with its stacks on stderr (the
    # method's line), restarted, and recovers: what it acknowledged is there.
    t.join(30)
    # The request ends: its connection closed when it ran on the killed worker, else the
    # worker that forwarded the call answers that it failed.
    (end,) = spun
    assert isinstance(end, httpx.TransportError) or (
        isinstance(end, httpx.Response) and end.status_code == 500 and "went away" in end.text
    ), end
    deadline = time.time() + 30
    while httpx.get(ready).status_code != 200:
        assert time.time() < deadline, srv.lines
        time.sleep(0.1)
    assert httpx.get(f"{url}/get").json() == 7
    assert httpx.get(f"{url}/put?v=8").json() == 8
    log = "".join(srv.lines)
    assert "event loop has not run for 4 s" in log, log
    assert re.search(r'stall/app\.py", line 1[345] in spin', log), log  # the loop's lines
    assert "exited (-9); restarting" in log, log
    after = set(srv.workers())
    assert len(after) == 2 and len(before & after) == 1
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
    restarts = [x for x in metrics.splitlines() if x.startswith("fastactor_worker_restarts_total")]
    assert sorted(int(x.split()[-1]) for x in restarts) == [0, 1], restarts
    # A loop blocked for less than the timeout is only waited for.
    assert httpx.get(f"{url}/sleep?s=2.5", timeout=30).text == "slept"
    assert set(srv.workers()) == after


def test_stall_timeout_0_never_restarts(serve: Callable[..., Server], tmp_path: Path) -> None:
    d = function_dir(
        tmp_path,
        "sleepy",
        "import time\n"
        "from fastactor import Response\n"
        "async def fetch(request, env):\n"
        "    time.sleep(2)  # holds the worker's event loop\n"
        "    return Response.text('slept')\n",
    )
    srv = serve(d, workers=1, extra=("--stall-timeout", "0"))
    before = srv.workers()
    assert httpx.get(srv.urls[0], timeout=30).text == "slept"
    assert srv.workers() == before and "restarting" not in "".join(srv.lines)


def test_http_limits_are_set_from_the_command_line(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    d = function_dir(
        tmp_path,
        "limits",
        "import asyncio\n"
        "from fastactor import Response\n"
        "async def fetch(request, env):\n"
        "    if request.path == '/slow':\n"
        "        await asyncio.sleep(10)\n"
        "    return Response.text(str(len(await request.body())))\n",
    )
    extra = ("--max-body", "1k", "--fetch-timeout", "0.5", "--idle-timeout", "1")
    srv = serve(d, workers=1, extra=(*extra, "--max-connections", "3"))
    (url,) = srv.urls
    assert httpx.post(url, content=b"x" * 1024).text == "1024"
    assert httpx.post(url, content=b"x" * 1025).status_code == 413
    started = time.monotonic()
    r = httpx.get(f"{url}/slow", timeout=30)
    assert r.status_code == 504 and "0.5 s" in r.text and time.monotonic() - started < 5
    host, port = url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
    try:
        extra_conn = socket.create_connection((host, int(port)), timeout=10)
        assert extra_conn.recv(4096).startswith(b"HTTP/1.1 503 "), "no answer past the cap"
        extra_conn.close()
        # An idle connection is closed after about a second (the timers tick at half of it).
        started = time.monotonic()
        assert held[0].recv(4096) == b""
        assert 0.8 < time.monotonic() - started < 5
    finally:
        for s in held:
            s.close()
    # The defaults, where nothing is given: 10 MiB bodies pass.
    srv = serve(d, workers=1, data=tmp_path / "defaults")
    assert httpx.post(srv.urls[0], content=b"x" * (10 << 20)).text == str(10 << 20)


def test_max_body_memory_answers_503_to_a_large_body_that_would_not_fit(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """A worker holds at most --max-body-memory of request bodies: with one large body on
    its way, a second that would not fit gets 503 and Retry-After at once, a small one goes
    on, and /metrics shows what is held."""
    d = function_dir(
        tmp_path,
        "uploads",
        "from fastactor import Response\n"
        "async def fetch(request, env):\n"
        "    return Response.text(str(len(await request.body())))\n",
    )
    admin = free_ports(1)
    extra = ("--max-body", "200k", "--max-body-memory", "300k", "--admin-port", str(admin))
    (url,) = serve(d, workers=1, extra=extra).urls
    host, port = url.removeprefix("http://").split(":")
    size = 200 << 10

    def held() -> int:
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        (n,) = re.findall(r'^fastactor_http_body_bytes\{worker="0"\} (\d+)$', text, re.M)
        return int(n)

    def head(path: str) -> bytes:
        return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode()

    first = socket.create_connection((host, int(port)), timeout=10)
    second = socket.create_connection((host, int(port)), timeout=10)
    try:
        first.sendall(head("/first") + b"x" * 10)
        deadline = time.monotonic() + 10
        while held() != size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held() == size
        second.sendall(head("/second"))
        refused = second.recv(4096)
        assert refused.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in refused.lower()
        assert httpx.post(url, content=b"x" * 1000).text == "1000"
        first.sendall(b"x" * (size - 10))
        assert first.recv(4096).endswith(b"\r\n\r\n%d" % size)
        assert held() == 0
    finally:
        first.close()
        second.close()


BLOCKING_ALARM_APP = """
from fastactor import AlarmRetry, Response, StatefulActor

class Clock(StatefulActor):
    alarm_retry = AlarmRetry(limit=1, delay=0.1)

    async def arm(self):
        await self.ctx.storage.set_alarm(0)  # due now

    async def alarm(self, info):
        await self.ctx.storage.put("runs", (await self.ctx.storage.get("runs") or 0) + 1)
        while True:  # never awaits: holds its worker's event loop, run after run
            pass

    async def state(self):
        return [await self.ctx.storage.get_alarm(), await self.ctx.storage.get("runs")]

async def fetch(request, env):
    clock = env.CLOCK.id_from_name(request.query.get("name", "c"))
    if request.path == "/arm":
        await clock.arm()
    return Response.json(await clock.state())
"""


# Names up to the longest an instance may have (2048 UTF-8 bytes), with an even and an odd
# count of bytes before the two-byte characters. (A key too long for the watchdog's region,
# 4 KiB, which only an older data directory could hold, is tested in test_watchdog.py.)
@pytest.mark.parametrize(
    "name", ["c", "é" * 1024, "x" + "é" * 1023], ids=["short", "long", "long-odd"]
)
def test_an_alarm_that_blocks_its_worker_is_retried_then_deleted(
    serve: Callable[..., Server], tmp_path: Path, name: str
) -> None:
    d = function_dir(tmp_path, "clock", BLOCKING_ALARM_APP, {"CLOCK": "Clock"})
    srv = serve(d, workers=1, extra=("--stall-timeout", "1"))
    (url,) = srv.urls
    shown = repr(name) if len(name) < 100 else repr(name[:100])[:-1]  # a cut name: its start
    try:
        httpx.get(f"{url}/arm", params={"name": name}, timeout=10)
    except httpx.TransportError:
        pass  # the alarm may already hold the loop when the answer would go out
    # The run holds the loop: the worker is killed and restarted, and the run counts as a
    # failure; the retry (AlarmRetry(limit=1)) blocks too, and then the alarm is deleted.
    deadline = time.time() + 60
    while "alarm failed 2 times, deleting it" not in "".join(srv.lines):
        assert time.time() < deadline, srv.lines
        time.sleep(0.1)
    log = "".join(srv.lines)
    assert log.count(f"was running the alarm of Clock {shown}") == 2, log
    assert log.count("': that run counts as failed") == 2, log
    assert "retry 1 in 0.1 s" in log, log
    workers = srv.workers()
    # The alarm is gone; the writes of the runs never committed; the worker stays up.
    assert httpx.get(url, params={"name": name}, timeout=10).json() == [None, None]
    time.sleep(1.5)
    assert srv.workers() == workers and log.count("restarting") == 2, srv.lines
