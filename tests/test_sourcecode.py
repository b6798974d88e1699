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


def test_lat_http_times_the_stub_call_of_the_example_it_serves(tmp_path: Path) -> None:
    # benchmarks/lat_http.py serves examples/account with one line of its fetch timed: the
    # edited module must still be the example, with the call wrapped (not silently untimed).
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import lat_http
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    src = lat_http.timed_app(tmp_path)
    compile(src, "app.py", "exec")
    assert src.count("_record(account.id, parts[2], time.perf_counter() - t0)") == 1
    assert "class Account(StatefulActor)" in src


def test_alarms_http_serves_a_function_that_compiles(tmp_path: Path) -> None:
    # benchmarks/alarms_http.py generates its function from a template (not run by pytest).
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import alarms_http
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    src = alarms_http.APP.format(example=str(ROOT / "examples/account/app.py"), out=str(tmp_path))
    compile(src, "app.py", "exec")
    assert "class Timer(StatefulActor)" in src and "async def fetch(request, env)" in src
