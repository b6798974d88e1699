"""A short run of tests/reliability/crashloop.py (RELIABILITY.md has the 100-cycle figure):
kill -9 of `fastactor serve --workers 2` under load, restart, every acknowledged request
reflected."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from crashloop import crash_loop  # noqa: E402


@pytest.mark.parametrize(
    "extra",
    [
        (),
        # Few instances resident and few bytes cached: accounts are evicted and reloaded
        # between their calls all through the load, with commits in flight.
        ("--max-resident", "8", "--max-cache-memory", "1KiB"),
    ],
    ids=["defaults", "evicting"],
)
def test_kill_9_cycles_under_load_lose_nothing(tmp_path: Path, extra: tuple[str, ...]) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    r = crash_loop(tmp_path / "data", 4, 32, 50, seed, extra)
    assert r["acked"] > 100, (seed, r)
