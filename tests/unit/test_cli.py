"""serve's default number of workers: the CPUs the process may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastactor.cli import usable_cpus


def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    assert usable_cpus(str(cpu_max)) == 8  # no cgroup v2 file: the mask
    for text, want in [
        ("max 100000\n", 8),  # no quota
        ("150000 100000\n", 2),  # --cpus=1.5: rounded up
        ("50000 100000\n", 1),
        ("1600000 100000\n", 8),  # a quota above the mask: the mask
        ("garbage\n", 8),
        ("100000 0\n", 8),
    ]:
        cpu_max.write_text(text)
        assert usable_cpus(str(cpu_max)) == want, text

    def no_affinity(pid: int) -> set[int]:
        raise OSError("not here")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(str(cpu_max)) == 3
