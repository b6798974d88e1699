"""The command line: serve's default number of workers (the CPUs the process may use), and
`python -m fastactor`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastactor import __version__
from fastactor.cli import usable_cpus


def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    v1 = tmp_path / "cpu"
    assert usable_cpus(str(cpu_max), str(v1)) == 8  # no cgroup file at all: the mask
    # cgroup v1 (no cpu.max): cpu.cfs_quota_us over cpu.cfs_period_us, -1 for none.
    v1.mkdir()
    for quota, period, want in [
        ("250000", "100000", 3),
        ("-1", "100000", 8),
        ("100000", "0", 8),
        ("lots", "100000", 8),
    ]:
        (v1 / "cpu.cfs_quota_us").write_text(quota + "\n")
        (v1 / "cpu.cfs_period_us").write_text(period + "\n")
        assert usable_cpus(str(cpu_max), str(v1)) == want, (quota, period)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")  # under v2's file, which wins
    for text, want in [
        ("max 100000\n", 8),  # no quota
        ("150000 100000\n", 2),  # --cpus=1.5: rounded up
        ("50000 100000\n", 1),
        ("1600000 100000\n", 8),  # a quota above the mask: the mask
        ("garbage\n", 8),
        ("100000 0\n", 8),
    ]:
        cpu_max.write_text(text)
        assert usable_cpus(str(cpu_max), str(v1)) == want, text

    def no_affinity(pid: int) -> set[int]:
        raise OSError("not here")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(str(cpu_max), str(v1)) == 3


def test_python_dash_m_runs_the_same_command_line(tmp_path: Path) -> None:
    version = subprocess.run(
        [sys.executable, "-m", "fastactor", "--version"], capture_output=True, text=True
    )
    assert (version.returncode, version.stdout.strip()) == (0, f"fastactor {__version__}")
    bad = subprocess.run(
        [sys.executable, "-m", "fastactor", "new", "Bad_Name"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "[a-z0-9-]+" in bad.stderr
    assert list(tmp_path.iterdir()) == []
    usage = subprocess.run(
        [sys.executable, "-m", "fastactor", "serve", "--help"], capture_output=True, text=True
    )
    assert usage.returncode == 0 and usage.stdout.startswith("usage: fastactor serve")
    assert "--commit-window-us" in usage.stdout and "./.fastactor" in usage.stdout
