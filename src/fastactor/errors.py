"""Every exception fastactor raises on purpose. Exported from ``fastactor`` too."""

from __future__ import annotations

__all__ = [
    "FastactorError",
    "LogCorruptionError",
    "LogFailedError",
]


class FastactorError(Exception):
    """Base class of fastactor's own errors."""


class LogCorruptionError(FastactorError):
    """A log directory holds damage recovery may not repair: a foreign file, a missing or
    damaged segment, or a bad record before the last write batch. The message names the file
    and the byte offset. Nothing was changed on disk."""


class LogFailedError(FastactorError, OSError):
    """A ``write`` or ``fdatasync`` of the log failed. The records of that batch and of every
    later one are not durable, and the log takes no further appends until it is reopened
    (which recovers the durable prefix). ``errno`` is the error the system call returned."""
