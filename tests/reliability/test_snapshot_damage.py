"""A short run of tests/reliability/snapshot_damage.py (RELIABILITY.md has the long one):
a snapshot damaged at rest is refused with an error naming it, or reads back whole."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snapshot_damage import run  # noqa: E402


def test_a_damaged_snapshot_is_refused_or_read_back_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL)  # each refusal is also logged
    seed = int.from_bytes(os.urandom(4), "little")
    got = run(tmp_path / "work", 120, seed)
    # Both outcomes came up: damage that start-up or a read caught, and damage that left
    # nothing the instances read (free space, a page's unused end).
    assert got["refused"] > 20 and got["read back"] > 5, (seed, got)
