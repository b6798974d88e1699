"""Alarms under `fastactor serve` (examples/reminders): delivered across workers, and kept
through kill -9 of the whole process tree, including those due while it was down."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import EXAMPLES, Server, run_cli

REMINDERS = EXAMPLES / "reminders"


def remind(url: str, name: str, in_ms: object, text: object = "hi") -> httpx.Response:
    return httpx.post(f"{url}/inboxes/{name}/remind", json={"in_ms": in_ms, "text": text})


def wait_delivered(url: str, names: list[str], count: int, timeout: float = 15) -> dict:
    deadline = time.time() + timeout
    while True:
        shown = {n: httpx.get(f"{url}/inboxes/{n}").json() for n in names}
        if all(len(s["delivered"]) >= count for s in shown.values()):
            return shown
        assert time.time() < deadline, shown
        time.sleep(0.1)


def test_reminders_fire_on_every_worker(serve: Callable[..., Server], tmp_path: Path) -> None:
    data = tmp_path / "fire"
    (url,) = serve(REMINDERS, data=data).urls
    names = [f"u{i}" for i in range(12)]
    due = {n: remind(url, n, 300, f"for {n}").json()["due"] for n in names}
    shown = wait_delivered(url, names, 1)
    for n, s in shown.items():
        (d,) = s["delivered"]
        assert d["text"] == f"for {n}" and d["at"] >= due[n] and s["alarm"] is None
    due_later = remind(url, "later", 3_600_000, "in an hour").json()["due"]
    shown_cli = run_cli("actors", "inspect", "Inbox", "--data", str(data))
    assert f'"alarm": {due_later}' in shown_cli.stdout
    assert remind(url, "u0", "soon").status_code == 400
    assert remind(url, "u0", -5).status_code == 400
    assert httpx.get(f"{url}/inboxes/u0").json()["pending"] == 0


def test_alarms_survive_kill_9_of_the_tree(serve: Callable[..., Server], tmp_path: Path) -> None:
    data = tmp_path / "alarms"
    s = serve(REMINDERS, data=data)
    (url,) = s.urls
    now_names = [f"now{i}" for i in range(5)]
    down_names = [f"down{i}" for i in range(10)]
    later_names = [f"later{i}" for i in range(5)]
    for n in now_names:
        assert remind(url, n, 0).status_code == 200
    wait_delivered(url, now_names, 1)
    due = {n: remind(url, n, 600).json()["due"] for n in down_names}
    due |= {n: remind(url, n, 3000).json()["due"] for n in later_names}
    os.killpg(s.proc.pid, signal.SIGKILL)  # every reminder above was acknowledged
    s.proc.wait(30)
    time.sleep(1.0)  # the "down" ones come due while down
    (url,) = serve(REMINDERS, data=data).urls
    shown = wait_delivered(url, down_names + later_names + now_names, 1)
    for n, d in due.items():
        (got,) = shown[n]["delivered"]
        assert got["at"] >= d
    # Delivered exactly once each here (the handler's writes and the clear are one record).
    assert all(len(shown[n]["delivered"]) == 1 for n in now_names)


def test_alarms_move_with_their_instances(serve: Callable[..., Server], tmp_path: Path) -> None:
    data = tmp_path / "moving"
    s = serve(REMINDERS, data=data, workers=2)
    names = [f"u{i}" for i in range(12)]
    due = {n: remind(s.urls[0], n, 1500, n).json()["due"] for n in names}
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0
    (url,) = serve(REMINDERS, data=data, workers=1).urls
    shown = wait_delivered(url, names, 1)
    for n in names:
        (got,) = shown[n]["delivered"]
        assert got["text"] == n and got["at"] >= due[n]
