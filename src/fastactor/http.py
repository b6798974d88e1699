"""``Request`` and ``Response`` as functions and actors see them (SPEC §6), with ``Headers``,
their case-insensitive read-only view of HTTP headers. They are native types
(core/http.pyx): the HTTP front makes one Request per request without parsing what a
function does not ask for (headers are indexed, the query parsed, on first use)."""

from __future__ import annotations

from ._core import Headers, Request, Response

__all__ = ["Headers", "Request", "Response"]
