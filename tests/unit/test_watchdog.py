"""The watchdog's note of a running alarm (server/watchdog.py): a key that fits is kept whole, a
longer one by its digest and start, and either is found again among the pending alarms."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastactor.server.watchdog import (
    KEY_MAX,
    Heartbeat,
    Watch,
    alarm_ref,
    describe_ref,
    resolve_ref,
)

NAMES = [
    "c",
    "x" * (KEY_MAX - len("Clock\0")),  # exactly fits
    "x" * (KEY_MAX - len("Clock\0") + 1),  # one byte over
    "é" * 3000,
    "x" + "é" * 3000,
    "\U0001f600" * 2000,  # four bytes a character
    "\ud800" + "y" * 5000,  # a lone surrogate (names are any str)
]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_a_running_alarm_is_found_again_from_its_note(tmp_path: Path, name: str) -> None:
    key = f"Clock\0{name}"
    others = [f"Clock\0{name}z", f"Clock\0{name[:-1]}", f"Other\0{name}"]
    path = str(tmp_path / "heartbeat")
    watch = Watch(path, 2, 0.0)
    beat = Heartbeat(path, 1)
    beat.alarm_step(key, 3)
    assert watch.running_alarm(0) is None
    noted = watch.running_alarm(1)
    assert noted is not None
    ref, retries = noted
    assert retries == 3
    assert len(alarm_ref(key)) <= KEY_MAX
    whole = len(key.encode("utf-8", "surrogatepass")) <= KEY_MAX
    assert (ref == key) is whole
    assert resolve_ref(ref, [*others, key]) == key
    type_name, shown = describe_ref(ref)
    assert type_name == "Clock"
    if whole:
        assert shown == name
    else:  # found by its digest only, and printed cut
        assert resolve_ref(ref, others) is None
        assert shown.endswith("...") and name.startswith(shown[:-3]) and len(shown) > 1000
    beat.alarm_step(None, 0)
    assert watch.running_alarm(1) is None
    watch.close()
