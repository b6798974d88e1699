"""kill -9 a process that appends to the log, many times over one directory: every LSN the
child reported durable is in the log after recovery, with its payload, and LSNs have no gap."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from fastactor import WriteAheadLog

sys.path.insert(0, str(Path(__file__).parent))
from childproc import run_and_kill  # noqa: E402

CHILD = Path(__file__).with_name("wal_child.py")
CYCLES = 60


def run_child(logdir: Path, tasks: int, seconds: float) -> tuple[int, dict[int, bytes]]:
    acked: dict[int, bytes] = {}

    def on_line(line: str) -> None:
        lsn, data = line.split(" ")
        acked[int(lsn)] = bytes.fromhex(data)

    first = run_and_kill([str(CHILD), str(logdir), str(tasks)], on_line, seconds)
    return int(first.split()[1]), acked


def test_sigkill_under_load_never_loses_an_acknowledged_record(tmp_path: Path) -> None:
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    logdir = tmp_path / "log"
    everything: dict[int, bytes] = {}
    total_acked = 0
    for cycle in range(CYCLES):
        tasks = rnd.choice([1, 8, 64, 512])
        next_lsn, acked = run_child(logdir, tasks, rnd.uniform(0.005, 0.15))
        # The child resumed exactly after what survived the previous kill.
        assert next_lsn == len(everything) + 1, f"cycle {cycle}"
        total_acked += len(acked)
        with WriteAheadLog(logdir, segment_size=64 * 1024) as w:  # recovery
            kept = {lsn: data for lsn, _, data in w.replay()}
        assert sorted(kept) == list(range(1, len(kept) + 1)), "no gaps"
        for lsn, data in acked.items():
            assert kept.get(lsn) == data, f"cycle {cycle}: acknowledged LSN {lsn} lost"
        for lsn, data in everything.items():
            assert kept[lsn] == data, "an older record changed"
        everything = kept
    assert total_acked > CYCLES, "the children acknowledged records"
