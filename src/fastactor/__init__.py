"""fastactor: stateful actors for Python with a native, durable core."""

from ._core import (
    ActorContext,
    ActorNamespace,
    ActorStub,
    CallFuture,
    LogReader,
    Storage,
    TimerWheel,
    Transaction,
    WriteAheadLog,
    write_file_atomic,
)
from ._version import __version__
from .actor import AlarmInfo, AlarmRetry, StatefulActor
from .errors import (
    ActorDeadlockError,
    ActorFetchTimeoutError,
    ActorMethodError,
    ActorMethodTimeoutError,
    ActorOutputGateError,
    ActorPrivateMethodError,
    ActorUnknownMethodError,
    BlockConcurrencyTimeoutError,
    CodecError,
    FastactorError,
    LogCorruptionError,
    LogFailedError,
    StorageLimitError,
)
from .http import Request, Response
from .runtime import Env, Runtime

__all__ = [
    "ActorContext",
    "ActorDeadlockError",
    "ActorFetchTimeoutError",
    "ActorMethodError",
    "ActorMethodTimeoutError",
    "ActorNamespace",
    "ActorOutputGateError",
    "ActorPrivateMethodError",
    "ActorStub",
    "ActorUnknownMethodError",
    "AlarmInfo",
    "AlarmRetry",
    "BlockConcurrencyTimeoutError",
    "CallFuture",
    "CodecError",
    "Env",
    "FastactorError",
    "LogCorruptionError",
    "LogFailedError",
    "LogReader",
    "Request",
    "Response",
    "Runtime",
    "StatefulActor",
    "Storage",
    "StorageLimitError",
    "Transaction",
    "TimerWheel",
    "WriteAheadLog",
    "__version__",
    "write_file_atomic",
]
