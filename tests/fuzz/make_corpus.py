"""Writes the small seed corpora the fuzzers start from (tests/fuzz/corpus/*).

python tests/fuzz/make_corpus.py
"""

import datetime
import decimal
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from fastactor import WriteAheadLog
from fastactor._core import encode_value

HERE = Path(__file__).parent / "corpus"


def wal_seeds() -> dict[str, bytes]:
    out = {}
    for name, batches in {
        "empty": [],
        "one-batch": [[b"a", b"bb", b"ccc"]],
        "three-batches": [[b"x" * 10], [b"y" * 40, b"z"], [b"w" * 3, b"v" * 7, b"u"]],
        "empty-records": [[b""], [b"", b""]],
    }.items():
        d = Path(tempfile.mkdtemp())
        with WriteAheadLog(d / "log") as w:
            for batch in batches:
                for rec in batch:
                    w.append(rec)
                if batch:
                    w.sync(w.last_lsn)
        (seg,) = (d / "log").glob("wal-*.log")
        out[name] = seg.read_bytes()
        shutil.rmtree(d)
    # A log whose writer died: its records, then zeros it wrote ahead of them (short here;
    # the log writes 1 MiB at a time).
    out["zeros-written-ahead"] = out["three-batches"] + bytes(512)
    return out


def codec_seeds() -> dict[str, bytes]:
    values = {
        "scalars": [None, True, 1, -(2**70), 1.5, "s", b"b"],
        "nested": {"a": [1, (2, 3)], "b": {"c": {1, 2}}, "d": frozenset({"x"})},
        "ext": [
            datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            datetime.date(2026, 1, 2),
            datetime.time(1, 2, 3),
            datetime.timedelta(days=1, microseconds=5),
            decimal.Decimal("1.25"),
            uuid.UUID(int=7),
            re.compile(r"a+b", re.I),
        ],
    }
    return {k: encode_value(v) for k, v in values.items()}


def http_seeds() -> dict[str, bytes]:
    return {
        "get": b"GET /a?x=1&y=%20 HTTP/1.1\r\nHost: t\r\n\r\n",
        "post-json": b'POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n{"a": 1}\n',
        "pipelined": b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n",
        "chunked": b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "close": b"GET / HTTP/1.0\r\n\r\n",
        "head": b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n",
        "expect": b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /json HTTP/1.1\r\nHost: t\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        "upgrade": b"POST /json HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 2\r\n\r\n{}GET /g HTTP/1.1\r\nHost: t\r\n\r\n",
        "unknown-method": b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n",
        "no-host": b"GET /1 HTTP/1.1\r\n\r\n",
    }


def main() -> None:
    for kind, seeds in (("wal", wal_seeds()), ("codec", codec_seeds()), ("http", http_seeds())):
        d = HERE / kind
        d.mkdir(parents=True, exist_ok=True)  # regress-* seeds (from findings) stay
        for name, data in seeds.items():
            (d / name).write_bytes(data)


if __name__ == "__main__":
    main()
