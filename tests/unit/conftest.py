"""Checks after every unit test, as uvloop's debug build asserts its handle counts at
teardown: here, on counts fastactor keeps itself.

The tests run their loops with ``uvloop.run``. With FASTACTOR_TEST_LOOP=asyncio they run on
asyncio's own loop instead (uvloop.run and uvloop.new_event_loop stand for asyncio's), as
uvloop runs its tests on both: a Runtime is also used on plain asyncio (a user's tests under
pytest-asyncio, an application that embeds one), and the runtime leans on asyncio's Task and
Future internals, which the two loops drive differently."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from fastactor.server.http import bodies_held

_LOOP = os.environ.get("FASTACTOR_TEST_LOOP", "uvloop")
if _LOOP not in ("uvloop", "asyncio"):
    raise pytest.UsageError(f"FASTACTOR_TEST_LOOP is uvloop or asyncio, not {_LOOP!r}")
if _LOOP == "asyncio":

    def _asyncio_run(main: Coroutine[Any, Any, Any], *, debug: bool | None = None) -> Any:
        return asyncio.run(main, debug=debug)

    uvloop.run = _asyncio_run
    uvloop.new_event_loop = asyncio.new_event_loop


def pytest_report_header() -> str:
    return f"fastactor unit tests on the {_LOOP} event loop"


@pytest.fixture(autouse=True)
def _bodies_given_back() -> Iterator[None]:
    """No request body is counted as held once a test is over (the count is the process's
    own, across all its connections): a path that forgot to give some back fails the test
    that took it, not a later one."""
    yield
    assert bodies_held() == 0, f"{bodies_held()} bytes of request bodies still counted"
