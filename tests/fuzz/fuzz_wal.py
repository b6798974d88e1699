"""Fuzzes log recovery: a mutated segment file is opened as the last segment of a log. The
result must be what the format's rules (csrc/wal.h, VALIDITY and RECOVERY) give, computed here
independently: the same records, the same torn-tail cut, or an error naming the file and the
offset where a record that later durable records follow is damaged. So recovery never crashes
and never silently drops a record a later batch vouches for.

    python tests/fuzz/fuzz_wal.py tests/fuzz/corpus/wal -max_total_time=60
"""

import atexit
import os
import shutil
import struct
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from fastactor import LogCorruptionError, WriteAheadLog
    from fastactor._core import crc32c

HEADER, REC = 32, 24
LIMIT = 256 << 20  # FA_WAL_RECORD_LIMIT
# In memory where there is a tmpfs: each run opens a log, and opening fdatasyncs.
DIR = tempfile.mkdtemp(
    prefix="fastactor-fuzz-wal-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)
atexit.register(shutil.rmtree, DIR, True)
SEGMENT = "wal-0000000000000001.log"


def check(buf: bytes, off: int, expect: int, first: int) -> int | None:
    """The record at OFF if valid with LSN EXPECT: its total length, else None."""
    if len(buf) - off < REC:
        return None
    crc, length, lsn, _type, flags, boff = struct.unpack_from("<IIQHHI", buf, off)
    if length > LIMIT or len(buf) - off - REC < length:
        return None
    if crc != crc32c(buf[off + 4 : off + REC + length]):
        return None
    if lsn != expect or flags != 0 or boff > lsn - first:
        return None
    return REC + length


def torn(buf: bytes, off: int, expect: int, first: int) -> bool:
    """RECOVERY 2a-2b: is the damage at OFF inside the last write batch?"""
    last_start, found = 0, False
    max_lsn = expect + (len(buf) - off) // REC
    p = off + 1
    while len(buf) - p >= REC:
        lsn = struct.unpack_from("<Q", buf, p + 8)[0]
        q = p
        if expect <= lsn <= max_lsn:
            while q < len(buf) and (n := check(buf, q, lsn, first)) is not None:
                last_start = lsn - struct.unpack_from("<I", buf, q + 20)[0]
                found = True
                q += n
                lsn += 1
        p = q if q > p else p + 1
    return not found or expect >= last_start


def model(buf: bytes) -> tuple[str, list[bytes], int]:
    """("ok", payloads, torn offset or -1) or ("error", [], offset or -1)."""
    if len(buf) < HEADER:
        return "error", [], -1
    magic, version, size, seqno, first, reserved, crc = struct.unpack_from("<4sHHQQII", buf)
    if (
        magic != b"FAWL"
        or crc != crc32c(buf[:28])
        or (version, size, seqno, reserved) != (1, HEADER, 1, 0)
        or first == 0
    ):
        return "error", [], -1
    off, expect, payloads = HEADER, first, []
    while off < len(buf) and (n := check(buf, off, expect, first)) is not None:
        payloads.append(buf[off + REC : off + n])
        off += n
        expect += 1
    if off == len(buf) or not buf[off:].strip(b"\0"):
        return "ok", payloads, -1  # the end of the file, or only zeros written ahead
    if torn(buf, off, expect, first):
        return "ok", payloads, off
    return "error", [], off


def test_one_input(data: bytes) -> None:
    log = os.path.join(DIR, "log")
    shutil.rmtree(log, ignore_errors=True)
    os.mkdir(log)
    with open(os.path.join(log, SEGMENT), "wb") as f:
        f.write(data)
    want, want_payloads, want_off = model(data)
    try:
        w = WriteAheadLog(log)
    except LogCorruptionError as e:
        assert want == "error", (data, e)
        assert SEGMENT in str(e), e
        if want_off >= 0:
            assert f"byte offset {want_off}" in str(e), (e, want_off)
        return
    try:
        assert want == "ok", data
        got = [payload for _, _, payload in w.replay(w.first_lsn)]
        assert got == want_payloads, (data, got, want_payloads)
        assert w.recovery["torn_offset"] == (want_off if want_off >= 0 else None), (
            w.recovery,
            want_off,
        )
        w.append(b"after recovery")  # the log goes on from the cut
        w.sync(w.last_lsn)
    finally:
        w.close()


if __name__ == "__main__":
    # The native code is not instrumented (that needs clang's -fsanitize=fuzzer-no-link):
    # coverage comes from the Python code, this harness (and its model) included.
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
