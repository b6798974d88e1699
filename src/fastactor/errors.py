"""Every exception fastactor raises on purpose. All are exported from ``fastactor`` too."""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "ActorDeadlockError",
    "ActorFetchTimeoutError",
    "ActorMethodError",
    "ActorMethodTimeoutError",
    "ActorOutputGateError",
    "ActorPrivateMethodError",
    "ActorUnknownMethodError",
    "BlockConcurrencyTimeoutError",
    "CodecError",
    "FastactorError",
    "LogCorruptionError",
    "LogFailedError",
    "StorageLimitError",
]


class FastactorError(Exception):
    """Base class of fastactor's own errors."""


class CodecError(FastactorError, TypeError):
    """A value can not be stored or sent: its type is not one the codec keeps (SPEC §3), or it
    contains itself. Raised at the write or the call; nothing was stored or sent."""


class StorageLimitError(FastactorError, ValueError):
    """A value is larger than 2 MiB once encoded. Nothing was stored."""


class ActorOutputGateError(FastactorError):
    """The turn's writes could not be made durable (the log failed), or a transaction of the
    turn raised: the reply is withheld and this error given instead. As with any call whose
    reply never came, writes whose durability failed may or may not be found after a
    restart (the disk may have kept them); an acknowledged write always is."""


class ActorMethodError(FastactorError):
    """The actor's method raised. ``remote_type`` is the name of the exception class it
    raised; the message is kept."""

    def __init__(self, message: str, remote_type: str) -> None:
        super().__init__(message)
        self.remote_type = remote_type

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (remote_error, (str(self), self.remote_type))


_remote_classes: dict[str, type[ActorMethodError]] = {}


def remote_error(message: str, remote_type: str) -> ActorMethodError:
    """The ActorMethodError a caller gets when the method raised an exception of class
    REMOTE_TYPE. Where that names a built-in exception or one of fastactor's own, the error is
    an instance of that class too, as Durable Objects' RPC rethrows built-in errors: ``except
    ValueError`` catches a ValueError the method raised, ``except CodecError`` an unstorable
    value it wrote, and ``except ActorMethodError`` catches them all."""
    cls = _remote_classes.get(remote_type)
    if cls is None:
        cls = _remote_classes[remote_type] = _remote_class(remote_type)
    return cls(message, remote_type)


def _remote_class(name: str) -> type[ActorMethodError]:
    base = getattr(builtins, name, None) or globals().get(name)  # built-in, or one of ours
    if (
        not isinstance(base, type)
        or not issubclass(base, Exception)
        or issubclass(base, (ActorMethodError, StopIteration, StopAsyncIteration, Warning))
    ):
        return ActorMethodError
    try:
        cls = type(
            "ActorMethodError",
            (ActorMethodError, base),
            {"__module__": __name__, "__str__": BaseException.__str__, "__doc__": None},
        )
        str(cls("probe", name))  # some built-ins need more than a message (UnicodeError)
    except Exception:
        return ActorMethodError
    cls.__qualname__ = "ActorMethodError"
    return cls


class ActorPrivateMethodError(FastactorError, AttributeError):
    """The method is not callable over RPC: its name starts with ``_``, or it is ``fetch``,
    ``alarm``, ``__init__`` or defined on ``StatefulActor`` itself."""


class ActorUnknownMethodError(FastactorError, AttributeError):
    """The actor class has no such method."""


class ActorMethodTimeoutError(FastactorError, TimeoutError):
    """The method ran past its budget (30 s by default). Its writes were discarded; the
    instance keeps serving."""


class ActorDeadlockError(FastactorError):
    """The call would wait forever: the instance it calls is in the middle of a turn that
    awaits, through a chain of calls, the turn making this call (``A`` calls ``B``, which calls
    ``A`` back; or an instance calls itself through a stub). One call at a time means the
    instance can not take the call before that turn ends. Raised as soon as that turn awaits
    its call, in place of a wait until the method's budget runs out; the call did not run.
    Orleans raises its ``DeadlockException`` for the same chain."""


class ActorFetchTimeoutError(FastactorError, TimeoutError):
    """The actor's ``fetch`` ran past its budget (30 s by default)."""


class BlockConcurrencyTimeoutError(FastactorError, TimeoutError):
    """``ctx.block_concurrency_while`` ran past its budget (30 s). The activation was torn
    down; the next call activates the instance afresh."""


class LogCorruptionError(FastactorError):
    """A data directory holds damage recovery may not repair: in the log, a foreign file, a
    missing or damaged segment, or a bad record before the last write batch (the message names
    the file and the byte offset); in the snapshot, a file SQLite can not read, or a value
    whose checksum does not match (the message names the file, the instance and the key).
    Nothing was changed on disk."""


class LogFailedError(FastactorError, OSError):
    """A ``write`` or ``fdatasync`` of the log failed. The records of that batch and of every
    later one are not durable, and the log takes no further appends until it is reopened
    (which recovers the durable prefix). ``errno`` is the error the system call returned."""
