"""Runs each fuzzer briefly (`make fuzz` runs them for minutes): recovery of mutated log
segments, the HTTP request path, the codec's decoder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("target", ["wal", "http", "codec"])
def test_fuzzer_runs_clean(target: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            str(HERE / f"fuzz_{target}.py"),
            str(tmp_path),  # new inputs go here, not into the repository's seeds
            str(HERE / "corpus" / target),
            "-max_total_time=4",
            f"-artifact_prefix={tmp_path}/",  # a crashing input is kept here
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    runs = [int(x.split()[-1]) for x in r.stderr.splitlines() if "number_of_executed_units" in x]
    assert runs and runs[0] > 1000, r.stderr[-2000:]
