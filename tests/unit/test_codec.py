"""The value codec: SPEC §3 types round-trip to the same type and value; nothing else passes."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
import zoneinfo
from collections import OrderedDict, namedtuple
from enum import IntEnum
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastactor import CodecError
from fastactor._core import copy_value, decode_value, encode_value


def same(a: Any, b: Any) -> bool:
    """Equal value and, recursively, the same types."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, decimal.Decimal) and a.is_nan():
        return b.is_nan()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            same(a[k], b[k]) and same(k, kb) for k, kb in zip(a, b, strict=True)
        )
    return bool(a == b)


SAMPLES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**40),
    1.5,
    -0.0,
    math.inf,
    math.nan,
    "",
    "héllo ☃ \U0001f600",
    b"",
    b"\x00\xff",
    [],
    [1, [2, [3]]],
    (),
    (1,),
    (1, (2, "x")),
    {},
    {"a": 1},
    {1: "int key"},
    {(1, 2): "tuple key", frozenset({3}): "frozenset key", None: 0, 2.5: "f"},
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({b"x", 1}),
    dt.datetime(2024, 2, 29, 12, 30, 1, 999999),
    dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2024, 1, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    dt.date(1, 1, 1),
    dt.date(9999, 12, 31),
    dt.time(23, 59, 59, 1),
    dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    dt.timedelta(days=-3, seconds=7, microseconds=11),
    dt.timedelta(0),
    decimal.Decimal("1.10"),
    decimal.Decimal("-0"),
    decimal.Decimal("NaN"),
    decimal.Decimal("-Infinity"),
    decimal.Decimal("1E+1000"),
    uuid.UUID(int=0),
    uuid.uuid4(),
    re.compile("a+b", re.IGNORECASE | re.MULTILINE),
    re.compile(b"[\x00-\x10]"),
    {"nested": [{"t": (dt.date(2020, 1, 1), {decimal.Decimal("2")})}]},
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_every_spec_type_round_trips(value: Any) -> None:
    back = decode_value(encode_value(value))
    assert same(value, back), (value, back)
    assert same(value, copy_value(value))


def test_zoneinfo_datetime_keeps_its_zone_and_fold() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    v = dt.datetime(2024, 7, 1, 12, tzinfo=paris)
    back = decode_value(encode_value(v))
    assert type(back) is dt.datetime and back == v and back.tzinfo is paris
    # Arithmetic across the DST change gives what it gave before the round trip.
    assert back + dt.timedelta(days=120) == v + dt.timedelta(days=120)
    assert (back + dt.timedelta(days=120)).utcoffset() == dt.timedelta(hours=1)
    # Times a zone makes ambiguous (repeated) or skips compare unequal to any other zone
    # (PEP 495): they come back with their zone and fold, so equal to what was stored.
    for t in (
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris),
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris, fold=1),
        dt.datetime(2024, 3, 31, 2, 30, tzinfo=paris),
        dt.datetime(2014, 9, 7, 2, 0, tzinfo=zoneinfo.ZoneInfo("Africa/Windhoek")),
        dt.datetime(2024, 1, 1, fold=1),  # naive: the fold stays too
    ):
        back = decode_value(encode_value(t))
        assert same(t, back) and back.fold == t.fold and back.tzinfo is t.tzinfo, (t, back)
    # Written by an older fastactor (offset only), or naming a zone this host lacks: the
    # written offset, the same instant.
    old = decode_value(b"\xc7\x19\x062024-07-01T12:00:00+02:00")
    assert old == v and old.utcoffset() == dt.timedelta(hours=2)

    def ext6(text: bytes) -> bytes:
        return b"\xc7" + bytes([len(text), 6]) + text

    odd = decode_value(ext6(b"2024-07-01T12:00:00+02:00[Nowhere/Atlantis]"))
    assert odd == v and odd.tzinfo == dt.timezone(dt.timedelta(hours=2))
    with pytest.raises(CodecError):
        decode_value(ext6(b"2024-07-01T12:00:00+02:00]x]"))  # a "]" with no "["
    # A zone name that is a path is refused by zoneinfo: the written offset stays.
    assert decode_value(ext6(b"2024-07-01T12:00:00+02:00[../../etc]")) == v


def test_values_are_copied() -> None:
    inner = [1, 2]
    v = {"k": inner, "s": {1}}
    c = copy_value(v)
    inner.append(3)
    v["s"].add(2)
    assert c == {"k": [1, 2], "s": {1}}
    assert c["k"] is not inner


class Point:
    pass


def _gen():  # type: ignore[no-untyped-def]
    yield 1


async def _coro() -> None:
    pass


Pair = namedtuple("Pair", "a b")


class Color(IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        Point(),
        lambda: 1,
        print,
        _gen(),
        bytearray(b"x"),
        memoryview(b"x"),
        object(),
        OrderedDict(a=1),
        Pair(1, 2),
        Color.RED,
        [1, Point()],
        {"a": {"b": object}},
        {Point(): 1},
        type,
        Exception("x"),
        range(3),
        1j,
    ],
    ids=lambda v: type(v).__name__,
)
def test_anything_else_is_a_codec_error(value: Any) -> None:
    with pytest.raises(CodecError):
        encode_value(value)


def test_coroutines_and_files_and_cycles_are_refused(tmp_path: Any) -> None:
    c = _coro()
    with pytest.raises(CodecError):
        encode_value(c)
    c.close()
    with open(tmp_path / "f", "w") as f, pytest.raises(CodecError):
        encode_value({"file": f})
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(CodecError, match="contains itself"):
        encode_value(loop)
    d: dict[str, Any] = {}
    d["me"] = [d]
    with pytest.raises(CodecError, match="contains itself"):
        encode_value(d)
    shared = [1]
    assert decode_value(encode_value([shared, shared])) == [[1], [1]]  # a DAG is fine
    deep: list[Any] = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(CodecError, match="nested"):
        encode_value(deep)


def test_corrupt_bytes_are_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_value(b"\xc1")
    enc = msgspec.msgpack.encode
    # Extension values no encoder wrote (found by tests/fuzz/fuzz_codec.py): each of them a
    # CodecError, never another exception.
    for code, payload in [
        (6, b"202--01-02T03:04:05+00:00"),  # datetime
        (7, b"\xff"),  # date, not UTF-8
        (9, enc([1, 2])),  # timedelta, too few fields
        (10, b"not a number"),  # Decimal
        (11, b"short"),  # UUID
        (12, enc(["(", 0])),  # re.Pattern that does not compile
        (3, enc([[1]])),  # a set of a list
        (5, enc([[1], 2])),  # a dict keyed by a list
        (5, enc([1, 0, 5])),  # a dict of an odd number of items (read past the end before)
        (5, enc(7)),  # a dict that is not a list
        (99, b""),  # unknown
    ]:
        with pytest.raises(CodecError):
            decode_value(enc(msgspec.msgpack.Ext(code, payload)))


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False)
    | st.uuids()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.times()
    | st.timedeltas()
)
hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
    lambda h: st.tuples(h, h) | st.frozensets(h, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    scalars,
    lambda v: (
        st.lists(v, max_size=4)
        | st.tuples(v, v)
        | st.dictionaries(st.text(), v, max_size=4)
        | st.dictionaries(hashables, v, max_size=3)
        | st.sets(hashables, max_size=3)
        | st.frozensets(hashables, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_property_round_trip(value: Any) -> None:
    assert same(value, decode_value(encode_value(value)))


def test_plain_values_are_deep_copies_too() -> None:
    inner = {"b": [2]}
    v = {"a": [1, inner], "big": 2**70}
    c = copy_value(v)
    inner["b"].append(3)
    v["a"].append("x")
    assert c == {"a": [1, {"b": [2]}], "big": 2**70}
    assert copy_value([1, "s", None, 1.5, b"x", True]) == [1, "s", None, 1.5, b"x", True]
