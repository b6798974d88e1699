"""The base class users write actors with (SPEC §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:
    from ._core import ActorContext
    from .http import Request, Response

__all__ = ["AlarmInfo", "AlarmRetry", "StatefulActor"]


@dataclass(frozen=True, slots=True)
class AlarmInfo:
    """What ``alarm(info)`` is told about the run: how many times it was retried before."""

    retry_count: int = 0
    is_retry: bool = False


@dataclass(frozen=True, slots=True)
class AlarmRetry:
    """How a failing alarm is retried: at most ``limit`` times, the n-th retry
    ``delay * backoff ** (n - 1)`` seconds (at most ``max_delay``) after the failure; then
    the alarm is deleted. Set ``alarm_retry = AlarmRetry(...)`` on an actor class."""

    limit: int = 3
    delay: float = 1.0
    backoff: float = 1.0
    max_delay: float = 3600.0

    def __post_init__(self) -> None:
        if type(self.limit) is not int or self.limit < 0:
            raise ValueError(f"AlarmRetry limit must be an int >= 0, not {self.limit!r}")
        for name in ("delay", "backoff", "max_delay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"AlarmRetry {name} must be a finite number, not {v!r}")
        if self.delay < 0 or self.backoff < 1 or self.max_delay < 0:
            raise ValueError("AlarmRetry needs delay >= 0, backoff >= 1 and max_delay >= 0")

    def delay_before(self, retry: int) -> float:
        """Seconds between the failure and retry number RETRY (1 for the first)."""
        return float(min(self.delay * self.backoff ** (retry - 1), self.max_delay))


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
    #: How a failing ``alarm`` is retried (default: 3 retries, 1 s apart, then deleted).
    alarm_retry: AlarmRetry = AlarmRetry()

    def __init__(self, ctx: ActorContext, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def alarm(self, info: AlarmInfo) -> None:
        """Runs when the instance's alarm fires (see SPEC §4); the default does nothing."""

    async def fetch(self, request: Request) -> Response:
        """Answers ``stub.fetch(request)``; the default is 404."""
        from .http import Response

        return Response.text("not found", status=404)


_core._set_actor_base(StatefulActor, AlarmInfo, AlarmRetry)
