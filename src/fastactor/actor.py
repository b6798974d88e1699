"""The base class users write actors with (SPEC §2)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:
    from ._core import ActorContext
    from .http import Request, Response

__all__ = ["AlarmInfo", "AlarmRetry", "StatefulActor", "check_actor_class"]

#: The budgets an actor class may set, in seconds (SPEC §2); None keeps the runtime's.
BUDGETS = ("method_timeout", "fetch_timeout", "alarm_timeout", "block_timeout")


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
    #: Budgets in seconds; None keeps the runtime's (30 s each; 15 min for ``alarm``). Past
    #: its budget a method call fails with ActorMethodTimeoutError, a ``stub.fetch`` with
    #: ActorFetchTimeoutError, an ``alarm`` run is retried, and ``block_concurrency_while``
    #: raises BlockConcurrencyTimeoutError and the activation is torn down.
    method_timeout: float | None = None
    fetch_timeout: float | None = None
    alarm_timeout: float | None = None
    block_timeout: float | None = None

    def __init__(self, ctx: ActorContext, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def alarm(self, info: AlarmInfo) -> None:
        """Runs when the instance's alarm fires (see SPEC §4); the default does nothing."""

    async def fetch(self, request: Request) -> Response:
        """Answers ``stub.fetch(request)``; the default is 404."""
        from .http import Response

        return Response.text("not found", status=404)


def signature_of(f: Any) -> inspect.Signature | None:
    """F's signature without its annotations (for messages), or None where it has none to
    read (some builtins)."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return None
    empty = inspect.Parameter.empty
    params = [p.replace(annotation=empty) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=empty)


# What the runtime calls on an actor class, and with what.
def check_seconds(what: str, v: object, or_none: bool = False) -> float:
    """V as a budget in seconds; TypeError or ValueError naming WHAT if it is not a finite
    number > 0 (OR_NONE: the TypeError says None is taken too)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        alt = " or None" if or_none else ""
        raise TypeError(f"{what} must be a number of seconds{alt}, not {type(v).__name__}")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a finite number > 0, not {v!r}")
    return float(v)


_CALLED_WITH = {"__init__": "self, ctx, env", "alarm": "self, info", "fetch": "self, request"}


def check_actor_class(cls: type[StatefulActor]) -> tuple[float | None, ...]:
    """The budgets CLS sets (None where it keeps the runtime's), in BUDGETS order; TypeError
    or ValueError naming the class and the attribute if one of its settings is not valid."""
    if not isinstance(getattr(cls, "alarm_retry", None), AlarmRetry):
        raise TypeError(f"{cls.__name__}.alarm_retry must be a fastactor.AlarmRetry")
    for name, takes in _CALLED_WITH.items():
        f = getattr(cls, name, None)
        if not callable(f):
            raise TypeError(f"{cls.__name__}.{name} must be a method taking ({takes})")
        sig = signature_of(f)
        if sig is None:
            continue  # a builtin: found out when it is called
        try:
            sig.bind(*(None for _ in takes.split(",")))
        except TypeError:
            raise TypeError(f"{cls.__name__}.{name}{sig} must take ({takes})") from None
    out: list[float | None] = []
    for name in BUDGETS:
        v = getattr(cls, name, None)
        out.append(None if v is None else check_seconds(f"{cls.__name__}.{name}", v, True))
    return tuple(out)


_core._set_actor_base(StatefulActor, AlarmInfo, AlarmRetry, check_actor_class)
