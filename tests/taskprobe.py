"""Checks of what asyncio offers on a task, for the tests of turns' and fetches' tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


def watch_pending(task: Any, on_done: Callable[[Any], None], seen: list[Any]) -> None:
    """Adds ON_DONE as a done callback of TASK, which must be pending (no result nor exception
    yet). A callback added and removed again must never run: it would append to SEEN."""

    def dropped(t: Any) -> None:
        seen.append("removed callback ran")

    task.add_done_callback(on_done)
    task.add_done_callback(dropped)
    assert task.remove_done_callback(dropped) == 1
    assert not task.done()
    with pytest.raises(asyncio.InvalidStateError):
        task.result()
    with pytest.raises(asyncio.InvalidStateError):
        task.exception()
