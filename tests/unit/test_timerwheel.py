"""The C timing wheel (csrc/timerwheel.c) through TimerWheel, against a plain model."""

from __future__ import annotations

import gc
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastactor import TimerWheel

MAX_TIME = (1 << 48) - 1


def test_fires_at_its_millisecond_and_not_before() -> None:
    w = TimerWheel(1000)
    w.add(1005, "a")
    w.add(1005 + 64 * 64 + 3, "b")
    assert w.next_due() == 1005
    assert w.advance(1004) == []
    assert w.advance(1005) == ["a"]
    assert len(w) == 1
    assert w.advance(1005 + 64 * 64 + 2) == []
    assert w.advance(1005 + 64 * 64 + 3) == ["b"]
    assert len(w) == 0 and w.next_due() is None


def test_past_and_present_times_are_due_at_once() -> None:
    w = TimerWheel(500)
    w.add(10, "past")
    w.add(500, "now")
    assert w.next_due() == 500
    assert w.advance(500) == ["past", "now"]


def test_cancel_returns_the_object_once() -> None:
    w = TimerWheel(0)
    h = w.add(70, "x")
    h2 = w.add(70, "y")
    assert w.cancel(h) == "x"
    assert w.cancel(h) is None  # stale handle: refused
    h3 = w.add(80, "z")  # reuses x's node under a new generation
    assert w.cancel(h) is None
    assert w.advance(100) == ["y", "z"]
    assert w.cancel(h2) is None and w.cancel(h3) is None
    assert w.cancel(123456789) is None


def test_range_is_checked() -> None:
    w = TimerWheel(0)
    w.add(MAX_TIME, "last")
    with pytest.raises(ValueError, match="range"):
        w.add(MAX_TIME + 1, "too far")
    with pytest.raises(OverflowError):
        w.add(-1, "negative")
    assert len(w) == 1


def test_references_are_released() -> None:
    obj = object()
    base = sys.getrefcount(obj)
    w = TimerWheel(0)
    handles = [w.add(i, obj) for i in range(1, 1000)]
    assert sys.getrefcount(obj) == base + 999
    for h in handles[:300]:
        w.cancel(h)
    assert len(w.advance(500)) == 200
    assert sys.getrefcount(obj) == base + 499
    del w
    gc.collect()
    assert sys.getrefcount(obj) == base


def test_many_timers_in_order() -> None:
    w = TimerWheel(1_700_000_000_000)
    base = w.now
    times = [base + (i * 7919) % 5_000_000 + 1 for i in range(100_000)]
    for t in times:
        w.add(t, t)
    got: list[int] = []
    while (nxt := w.next_due()) is not None:
        assert nxt >= w.now
        got += w.advance(nxt)
    assert got == sorted(times)
    # 32-byte nodes, grown by half: at most 48 bytes per timer plus the fixed part.
    assert w.memory <= 48 * 100_000 + 8192


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 1 << 44),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(-100, 1 << 20)),
            st.tuples(st.just("far"), st.integers(1 << 20, 1 << 40)),
            st.tuples(st.just("cancel"), st.integers(0, 50)),
            st.tuples(st.just("advance"), st.integers(0, 1 << 18)),
        ),
        max_size=120,
    ),
)
def test_matches_a_model(start: int, ops: list[tuple[str, int]]) -> None:
    w = TimerWheel(start)
    now = start
    model: dict[int, int] = {}  # seq -> due time
    added_due: set[int] = set()  # added at or before the wheel's time
    handles: list[tuple[int, int]] = []
    seq = 0
    for op, n in ops:
        if op in ("add", "far"):
            when = max(now + n, 0)
            handles.append((w.add(when, seq), seq))
            model[seq] = when
            if when <= now:
                added_due.add(seq)
            seq += 1
        elif op == "cancel" and handles:
            h, s = handles[n % len(handles)]
            assert w.cancel(h) == (s if s in model else None)
            model.pop(s, None)
        elif op == "advance":
            now += n
            got = w.advance(now)
            due = [s for s, t in model.items() if t <= now]
            assert sorted(got) == sorted(due)
            # Due times come out in order (timers added already due aside).
            times = [model[s] for s in got if s not in added_due]
            assert times == sorted(times)
            for s in due:
                del model[s]
        assert len(w) == len(model)
        nxt = w.next_due()
        if model:
            assert nxt is not None and nxt <= max(min(model.values()), w.now)
        else:
            assert nxt is None
