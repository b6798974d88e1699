"""The base class users write actors with (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:
    from ._core import ActorContext
    from .http import Request, Response

__all__ = ["AlarmInfo", "StatefulActor"]


@dataclass(frozen=True, slots=True)
class AlarmInfo:
    """What ``alarm(info)`` is told about the run: how many times it was retried before."""

    retry_count: int = 0
    is_retry: bool = False


class StatefulActor:
    """Subclass it; public ``async`` methods become callable over RPC through stubs.

    ``self.ctx`` is the instance's context (``ctx.id``, ``ctx.storage``,
    ``ctx.block_concurrency_while``); ``self.env`` the bindings of the function that owns the
    type. Instance attributes are a cache: only ``ctx.storage`` survives eviction, restarts
    and crashes. Methods whose names start with ``_``, ``fetch``, ``alarm`` and everything
    defined here are not callable over RPC.
    """

    ctx: ActorContext
    env: Any

    def __init__(self, ctx: ActorContext, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def alarm(self, info: AlarmInfo) -> None:
        """Runs when the instance's alarm fires (see SPEC §4); the default does nothing."""

    async def fetch(self, request: Request) -> Response:
        """Answers ``stub.fetch(request)``; the default is 404."""
        from .http import Response

        return Response.text("not found", status=404)


_core._set_actor_base(StatefulActor)
