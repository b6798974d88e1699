"""``Request`` and ``Response`` as functions and actors see them (SPEC §6)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

__all__ = ["Headers", "Request", "Response"]

_HeaderInit = Mapping[str, str] | Iterable[tuple[str, str]] | None


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only view of HTTP headers; a repeated header's values are
    joined with ", " (``getall`` gives them one by one)."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: _HeaderInit = None) -> None:
        pairs = list(items.items() if isinstance(items, Mapping) else items or ())
        self._items: list[tuple[str, str]] = [(str(k), str(v)) for k, v in pairs]
        self._index: dict[str, list[str]] = {}
        for k, v in self._items:
            self._index.setdefault(k.lower(), []).append(v)

    def __getitem__(self, key: str) -> str:
        return ", ".join(self._index[key.lower()])

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def getall(self, key: str) -> list[str]:
        return list(self._index.get(key.lower(), ()))

    def raw(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Request:
    """An HTTP request: ``method``, ``url``, ``path``, ``query`` (last value wins),
    ``headers`` (case-insensitive) and the body through ``await body()/text()/json()``."""

    __slots__ = ("method", "url", "path", "headers", "_body", "_query", "_qs")

    def __init__(
        self,
        method: str,
        url: str,
        headers: _HeaderInit = None,
        body: bytes = b"",
    ) -> None:
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes")
        self.method = method.upper()
        self.url = url
        parts = urlsplit(url)
        self.path = parts.path or "/"
        self._qs = parts.query
        self._query: dict[str, str] | None = None
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._body = body

    @property
    def query(self) -> dict[str, str]:
        """The query string as a dict (last value wins), parsed on first use."""
        if self._query is None:
            self._query = dict(parse_qsl(self._qs, keep_blank_values=True))
        return self._query

    async def body(self) -> bytes:
        return self._body

    async def text(self) -> str:
        return self._body.decode("utf-8")

    async def json(self) -> Any:
        """The body parsed as JSON; a ValueError if it is not JSON."""
        return _json_decode(self._body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class Response:
    """An HTTP response. ``Response.json(obj)`` and ``Response.text(s)`` set the body and
    its content type."""

    __slots__ = ("body", "status", "headers")

    def __init__(self, body: bytes = b"", status: int = 200, headers: _HeaderInit = None) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            raise TypeError("Response body must be bytes or str")
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"bad HTTP status {status!r}")
        self.body = body
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: _HeaderInit = None) -> Response:
        h = Headers(headers)
        items = h.raw()
        if "content-type" not in h:
            items.append(("content-type", "application/json"))
        return cls(_json_encode(obj), status, items)

    @classmethod
    def text(cls, s: str, status: int = 200, headers: _HeaderInit = None) -> Response:
        h = Headers(headers)
        items = h.raw()
        if "content-type" not in h:
            items.append(("content-type", "text/plain; charset=utf-8"))
        return cls(s.encode("utf-8"), status, items)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"
