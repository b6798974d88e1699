"""Checks after every unit test, as uvloop's debug build asserts its handle counts at
teardown: here, on counts fastactor keeps itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastactor.server.http import bodies_held


@pytest.fixture(autouse=True)
def _bodies_given_back() -> Iterator[None]:
    """No request body is counted as held once a test is over (the count is the process's
    own, across all its connections): a path that forgot to give some back fails the test
    that took it, not a later one."""
    yield
    assert bodies_held() == 0, f"{bodies_held()} bytes of request bodies still counted"
