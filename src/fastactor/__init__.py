"""fastactor: stateful actors for Python with a native, durable core."""

from ._core import LogReader, WriteAheadLog, write_file_atomic
from ._version import __version__
from .errors import FastactorError, LogCorruptionError, LogFailedError

__all__ = [
    "FastactorError",
    "LogCorruptionError",
    "LogFailedError",
    "LogReader",
    "WriteAheadLog",
    "__version__",
    "write_file_atomic",
]
