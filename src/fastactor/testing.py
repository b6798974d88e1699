"""Helpers for testing actors, loaded as a pytest plugin.

async def test_debit(actor_runtime):
    async with actor_runtime(Account) as rt: ...

def test_survives_crash(actor_runtime):
    async def go():
        rt = actor_runtime(Account); await rt.start()
        await rt.namespace("Account").id_from_name("a").deposit(5)
        crash(rt)                                 # nothing is flushed or checkpointed
        async with actor_runtime(Account) as rt2: ...  # same data directory
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .actor import StatefulActor
from .runtime import Runtime

__all__ = ["RuntimeFactory", "actor_runtime", "crash"]


class RuntimeFactory:
    """Makes runtimes over one temporary data directory (so a second one sees the state the
    first left, like a restart)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __call__(self, *actors: type[StatefulActor], **options: Any) -> Runtime:
        return Runtime(self.data_dir, list(actors), **options)


def crash(rt: Runtime) -> None:
    """Drops a running runtime the way ``kill -9`` would: appends not yet handed to the disk
    are lost, nothing is checkpointed, in-flight calls never get a reply."""
    rt._abandon()


@pytest.fixture
def actor_runtime(tmp_path: Path) -> RuntimeFactory:
    """A RuntimeFactory over a fresh temporary data directory."""
    return RuntimeFactory(tmp_path / "fastactor-data")
