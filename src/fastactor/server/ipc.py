"""Calls between shard workers: a stub whose instance another worker owns sends the call
over that worker's Unix socket, as codec frames, and gets the reply (or the error) back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import struct
from typing import Any

from .. import errors
from .._core import ActorNamespace, ActorStub, decode_value, encode_value
from ..http import Request, Response
from .layout import owner_of

__all__ = ["Channel", "RoutedNamespace", "serve_calls"]

log = logging.getLogger("fastactor.ipc")
_LEN = struct.Struct(">I")
KIND_CALL, KIND_FETCH = 0, 1


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(4)
    return decode_value(await reader.readexactly(_LEN.unpack(head)[0]))


def _frame(obj: Any) -> bytes:
    data = encode_value(obj)
    return _LEN.pack(len(data)) + data


class _Batcher:
    """Frames written in one event loop iteration leave in one write() (one system call)."""

    __slots__ = ("writer", "frames", "scheduled")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.frames: list[bytes] = []
        self.scheduled = False

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        if self.frames and not self.writer.is_closing():
            self.writer.write(b"".join(self.frames))
        self.frames.clear()


def _error_tuple(e: BaseException) -> tuple[str, str, str]:
    remote = getattr(e, "remote_type", type(e).__name__)
    return (type(e).__name__, str(e), remote)


def _error_from(name: str, message: str, remote: str) -> BaseException:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.FastactorError):
        if cls is errors.ActorMethodError:
            return errors.ActorMethodError(message, remote)
        if cls is errors.LogFailedError:
            return errors.ActorOutputGateError(message)
        return cls(message)
    return errors.ActorMethodError(message, remote)


async def serve_calls(path: str, namespaces: dict[str, ActorNamespace]) -> asyncio.AbstractServer:
    """Answers calls for the instances this worker owns; NAMESPACES maps "account/type"."""

    async def run(req: tuple[Any, ...]) -> tuple[Any, ...]:
        call_id, key, name, kind, method, args, kwargs = req
        try:
            stub: ActorStub = namespaces[key].id_from_name(name)
            if kind == KIND_FETCH:
                m, url, headers, body = args
                r = await stub.fetch(Request(m, url, headers, body))
                return (call_id, True, (r.status, r.headers.raw(), r.body))
            return (call_id, True, await getattr(stub, method)(*args, **kwargs))
        except BaseException as e:  # the caller gets it, as the local call would have
            return (call_id, False, _error_tuple(e))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: set[asyncio.Task[None]] = set()
        out = _Batcher(writer)

        async def one(req: tuple[Any, ...]) -> None:
            reply = await run(req)
            try:
                out.send(_frame(reply))
            except errors.CodecError as e:
                out.send(_frame((reply[0], False, _error_tuple(e))))

        try:
            while True:
                req = await _read_frame(reader)
                t = asyncio.ensure_future(one(req))
                pending.add(t)
                t.add_done_callback(pending.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            out.flush()
            writer.close()

    return await asyncio.start_unix_server(handle, path=path)


class Channel:
    """This worker's connections to the others, opened on first use."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.conns: dict[int, tuple[_Batcher, dict[int, asyncio.Future[Any]]]] = {}
        self.opening: dict[int, asyncio.Future[None]] = {}
        self.ids = itertools.count(1)

    async def _conn(self, owner: int) -> tuple[_Batcher, dict[int, Any]]:
        c = self.conns.get(owner)
        if c is not None:
            return c
        if owner in self.opening:
            await self.opening[owner]
            return self.conns[owner]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opening[owner] = fut
        try:
            for _ in range(100):
                try:
                    reader, writer = await asyncio.open_unix_connection(self.paths[owner])
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    await asyncio.sleep(0.05)  # the peer is (re)starting
            else:
                raise ConnectionError(f"worker {owner} does not answer")
            waiting: dict[int, asyncio.Future[Any]] = {}
            self.conns[owner] = (_Batcher(writer), waiting)
            asyncio.ensure_future(self._replies(owner, reader, waiting))
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self.opening[owner]
        return self.conns[owner]

    async def _replies(
        self, owner: int, reader: asyncio.StreamReader, waiting: dict[int, asyncio.Future[Any]]
    ) -> None:
        try:
            while True:
                call_id, ok, value = await _read_frame(reader)
                f = waiting.pop(call_id, None)
                if f is None or f.done():
                    continue
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(_error_from(*value))
        except (asyncio.IncompleteReadError, ConnectionError, errors.CodecError):
            pass
        finally:
            self.conns.pop(owner, None)
            for f in waiting.values():
                if not f.done():
                    f.set_exception(
                        errors.ActorOutputGateError(
                            f"the worker owning the instance went away (worker {owner}); the "
                            "call may or may not have been carried out"
                        )
                    )

    async def call(
        self,
        owner: int,
        key: str,
        name: str,
        kind: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        out, waiting = await self._conn(owner)
        call_id = next(self.ids)
        frame = _frame((call_id, key, name, kind, method, args, kwargs))  # CodecError here
        f: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[call_id] = f
        out.send(frame)
        return await f

    def close(self) -> None:
        for out, _ in list(self.conns.values()):
            out.flush()
            out.writer.close()


class RemoteStub:
    """A stub for an instance another worker owns; the same surface as ActorStub."""

    __slots__ = ("id", "_ns", "_owner")

    def __init__(self, ns: RoutedNamespace, name: str, owner: int) -> None:
        self.id = name
        self._ns = ns
        self._owner = owner

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._ns.channel.call(
                self._owner, self._ns.key, self.id, KIND_CALL, method, args, kwargs
            )

        return call

    async def fetch(self, request: Request) -> Response:
        body = await request.body()
        status, headers, rbody = await self._ns.channel.call(
            self._owner,
            self._ns.key,
            self.id,
            KIND_FETCH,
            "fetch",
            (request.method, request.url, request.headers.raw(), body),
            {},
        )
        return Response(rbody, status, headers)

    def __repr__(self) -> str:
        return f"<ActorStub {self._ns.type_name} {self.id!r} (worker {self._owner})>"


class RoutedNamespace:
    """``env.<BINDING>`` under ``serve``: stubs of instances this worker owns are local ones;
    the others go through the channel to their owner."""

    def __init__(
        self,
        local: ActorNamespace,
        account: str,
        type_name: str,
        me: int,
        workers: int,
        channel: Channel,
    ) -> None:
        self.local = local
        self.account = account
        self.type_name = type_name
        self.key = f"{account}/{type_name}"
        self.me = me
        self.workers = workers
        self.channel = channel

    def id_from_name(self, name: str, *, location_hint: str | None = None) -> Any:
        local = self.local.id_from_name(name)  # checks the name
        owner = owner_of(self.account, self.type_name, name, self.workers)
        return local if owner == self.me else RemoteStub(self, name, owner)

    def new_unique_id(self, *, location_hint: str | None = None) -> Any:
        return self.id_from_name(secrets.token_hex(32))

    def __repr__(self) -> str:
        return f"<ActorNamespace {self.type_name}>"
