"""Linters and type checks run as tests, so CI cannot skip them; and the tests must be
exercising the installed wheel, not the source tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fastactor

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff() -> None:
    p = run("ruff", "check", "src", "tests", "benchmarks", "examples")
    assert p.returncode == 0, p.stdout + p.stderr
    p = run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_strict() -> None:
    p = run("mypy", "src/fastactor")
    assert p.returncode == 0, p.stdout + p.stderr


def test_tests_import_the_installed_package() -> None:
    assert not Path(fastactor.__file__).resolve().is_relative_to(ROOT / "src")
    assert Path(fastactor._core.__file__).suffix == ".so"
