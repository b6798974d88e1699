"""The C API of csrc/wal.c driven directly through a cffi harness (no Cython in between)."""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cwal  # noqa: E402


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return cwal.build(tmp_path_factory.mktemp("harness"))


def open_log(c: tuple[Any, Any], d: Path, **opts: int) -> Any:
    ffi, lib = c
    o = ffi.new("fa_wal_options *")
    lib.fa_wal_options_init(o)
    for k, v in opts.items():
        setattr(o, k, v)
    out = ffi.new("fa_wal **")
    err = ffi.new("char[512]")
    rc = lib.fa_wal_open(str(d).encode(), o, out, ffi.NULL, err, 512)
    assert rc == 0, ffi.string(err)
    return out[0]


def append(c: tuple[Any, Any], w: Any, data: bytes, type: int = 0) -> int:
    ffi, lib = c
    lsn = ffi.new("uint64_t *")
    rc = lib.fa_wal_append(w, type, data, len(data), lsn)
    assert rc == 0, rc
    return int(lsn[0])


def read(
    c: tuple[Any, Any], d: Path, start: int = 1, upto: int = 0
) -> list[tuple[int, int, bytes]]:
    ffi, lib = c
    r = ffi.new("fa_wal_reader **")
    err = ffi.new("char[512]")
    assert lib.fa_wal_reader_open(str(d).encode(), start, upto, r, err, 512) == 0
    rec = ffi.new("fa_wal_record *")
    out = []
    try:
        while (rc := lib.fa_wal_reader_next(r[0], rec, err, 512)) == 1:
            out.append((rec.lsn, rec.type, bytes(ffi.buffer(rec.data, rec.len))))
        assert rc == 0, ffi.string(err)
    finally:
        lib.fa_wal_reader_close(r[0])
    return out


def test_crc32c_instruction_and_tables_agree(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    assert lib.fa_crc32c_sw(0, b"123456789", 9) == 0xE3069283
    assert lib.fa_crc32c(0, b"123456789", 9) == 0xE3069283
    rnd = random.Random(7)
    blob = rnd.randbytes(4096)
    for _ in range(500):
        start, n = rnd.randrange(0, 64), rnd.randrange(0, 2000)
        chunk = ffi.from_buffer(blob)[start : start + n]
        seed = rnd.getrandbits(32)
        assert lib.fa_crc32c(seed, chunk, n) == lib.fa_crc32c_sw(seed, chunk, n)


def test_blocking_wait_from_threads_and_reader_bounds(c: tuple[Any, Any], tmp_path: Path) -> None:
    ffi, lib = c
    w = open_log(c, tmp_path, segment_size=4096)
    lock = threading.Lock()  # one owner thread at a time, as the API asks
    acked: list[int] = []

    def worker(k: int) -> None:
        for i in range(200):
            with lock:
                lsn = append(c, w, f"{k}:{i}".encode() * 3, type=k)
            assert lib.fa_wal_wait(w, lsn) == 0
            assert lib.fa_wal_durable_lsn(w) >= lsn
            acked.append(lsn)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(acked) == list(range(1, 801))
    assert lib.fa_wal_wait(w, 10_000) == -errno.EINVAL
    got = read(c, tmp_path)
    assert [r[0] for r in got] == list(range(1, 801))
    assert [r[0] for r in read(c, tmp_path, 100, 120)] == list(range(100, 121))
    assert len(list(tmp_path.glob("wal-*.log"))) > 2
    durable = ffi.new("uint64_t *")
    assert lib.fa_wal_close(w, durable) == 0 and durable[0] == 800


def test_fault_codes_and_argument_checks(c: tuple[Any, Any], tmp_path: Path) -> None:
    ffi, lib = c
    w = open_log(c, tmp_path, max_record=100)
    lsn = ffi.new("uint64_t *")
    assert lib.fa_wal_append(w, 0, b"x" * 101, 101, lsn) == -errno.EMSGSIZE
    assert lib.fa_wal_inject_fault(w, 99, 0, errno.EIO) == -errno.EINVAL
    assert lib.fa_wal_checkpoint(w, 5) == -errno.EINVAL
    ok = append(c, w, b"ok")
    assert lib.fa_wal_wait(w, ok) == 0
    assert lib.fa_wal_inject_fault(w, 2, 0, errno.EIO) == 0
    bad = append(c, w, b"bad")
    assert lib.fa_wal_wait(w, bad) == -errno.EIO
    assert lib.fa_wal_error(w) == -errno.EIO
    assert lib.fa_wal_append(w, 0, b"more", 4, lsn) == -errno.EIO
    assert lib.fa_wal_wait(w, ok) == 0
    assert lib.fa_wal_close(w, ffi.NULL) == -errno.EIO
    assert lib.fa_write_file_atomic(str(tmp_path).encode(), b"a/b", b"", 0) == -errno.EINVAL


def test_event_fd_signals_durability(c: tuple[Any, Any], tmp_path: Path) -> None:
    import select

    ffi, lib = c
    w = open_log(c, tmp_path)
    fd = lib.fa_wal_event_fd(w)
    assert select.select([fd], [], [], 0)[0] == []
    lsn = append(c, w, b"wake me")
    lib.fa_wal_kick(w)
    assert select.select([fd], [], [], 5)[0] == [fd]
    lib.fa_wal_drain_event(w)
    assert lib.fa_wal_durable_lsn(w) == lsn
    assert select.select([fd], [], [], 0)[0] == []
    assert lib.fa_wal_close(w, ffi.NULL) == 0
    assert os.path.exists(tmp_path / "LOCK")


def test_c_sources_are_warning_free_and_the_threaded_stress_passes(tmp_path: Path) -> None:
    """-Wall -Wextra -Werror on csrc/, and tests/c/wal_stress.c (the program `make tsan` runs
    under ThreadSanitizer) run plainly: four appender threads, waits, concurrent checkpoints."""
    import subprocess

    exe = tmp_path / "wal_stress"
    root = cwal.ROOT
    subprocess.run(
        [
            "gcc",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            f"-I{root / 'csrc'}",
            str(root / "tests/c/wal_stress.c"),
            str(root / "csrc/wal.c"),
            "-o",
            str(exe),
            "-pthread",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    p = subprocess.run(
        [str(exe), str(tmp_path / "log")], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "8000 records" in p.stdout
