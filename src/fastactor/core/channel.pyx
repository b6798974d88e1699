# Calls between the shard workers of `fastactor serve`. Included by _core.pyx.
#
# Every instance belongs to one of PARTITIONS partitions (crc32c of "account\0type\0name"),
# partition p to worker p % workers. A RoutedNamespace gives the local stub for an instance
# this worker owns and a RemoteStub for the others; a RemoteStub's call becomes a frame on the
# Channel to the owner's Unix socket, where a CallServer connection hands it to the shard as
# a local call and sends the reply (or the error) back when the output gate releases it.
#
# Frames are a 4-byte big-endian length and a codec value: a call is
# [id, "account/type", name, kind, method, args, kwargs, chain], a reply [id, ok, value or
# error]; chain is the call chain of the turn making the call (dispatcher.pyx), or None.
# Frames sent in one event loop iteration are encoded one after another into one buffer and
# leave in one write; a received chunk is parsed in place, and only a frame cut by the
# chunk's end is kept (and copied once, when whole).

from . import errors as _errors_mod

PARTITIONS = 4096
cdef uint32_t _PARTITIONS = 4096
# Not a turn: a call frame of this kind asks the worker for its counters, answered at once
# with the dict its stats function returns (the supervisor's /metrics, see server/admin.py).
STATS_KIND = -1
cdef int _KIND_STATS = -1
cdef uint32_t _MAX_FRAME = 1 << 30
cdef object _ipc_log = logging.getLogger("fastactor.ipc")

# This process's channel counters (one worker per process), for /metrics: calls sent to the
# workers owning their instances, calls run here for other workers, and the frames (calls
# and replies) sent with the writes that carried them: frames / writes is how well a loop
# iteration's frames share one write.
cdef uint64_t _calls_out = 0
cdef uint64_t _calls_in = 0
cdef uint64_t _frames_out = 0
cdef uint64_t _writes_out = 0


def channel_stats():
    """This process's channel counters: calls_out, calls_in, frames_out, writes_out."""
    return {"calls_out": _calls_out, "calls_in": _calls_in, "frames_out": _frames_out,
            "writes_out": _writes_out}


def _frame_limit(uint32_t limit=0):
    """The largest frame a channel carries (1 GiB); with LIMIT, sets it (tests)."""
    global _MAX_FRAME
    if limit:
        _MAX_FRAME = limit
    return _MAX_FRAME


cdef int _append_frame(bytearray out, object msg) except -1:
    """Appends MSG as one frame to OUT; CodecError, and OUT as it was, if MSG holds a value
    the codec does not take or is larger than a frame may be (a call's arguments or a reply
    over 1 GiB encoded)."""
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
    cdef Py_ssize_t n
    cdef unsigned char *p
    out += b"\0\0\0\0"
    try:
        append_value(out, msg)
    except BaseException:
        del out[start:]
        raise
    n = PyByteArray_GET_SIZE(out) - start - 4
    if n > <Py_ssize_t>_MAX_FRAME:
        del out[start:]
        raise CodecError(f"a call or reply of {n} bytes encoded is larger than a call between "
                         f"workers may be ({_MAX_FRAME} bytes)")
    p = <unsigned char *>PyByteArray_AS_STRING(out) + start
    p[0] = (n >> 24) & 0xFF
    p[1] = (n >> 16) & 0xFF
    p[2] = (n >> 8) & 0xFF
    p[3] = n & 0xFF
    return 0


def encode_frame(msg):
    """MSG as one channel frame, for a client that is not a worker (server/ipc.ask_stats)."""
    cdef bytearray out = bytearray()
    _append_frame(out, msg)
    return bytes(out)


cdef list _error_tuple(object e):
    remote = getattr(e, "remote_type", type(e).__name__)
    return [type(e).__name__, str(e), remote if type(remote) is str else type(e).__name__]


cdef object _error_from(object value):
    """The exception a reply's error tuple stands for: fastactor's own errors by name,
    anything else as the ActorMethodError the local call would have raised."""
    try:
        name, message, remote = value
        name = str(name)
        message = str(message)
    except (TypeError, ValueError):
        return ActorMethodError(f"a malformed error reply: {value!r}", "?")
    cls = getattr(_errors_mod, name, None)
    if isinstance(cls, type) and issubclass(cls, _errors_mod.FastactorError):
        if cls is ActorMethodError:
            return remote_error(message, str(remote))
        if cls is LogFailedError:
            return ActorOutputGateError(message)
        return cls(message)
    return remote_error(message, str(remote))


cdef class _FrameConn:
    """A Unix socket connection carrying frames both ways (base of both ends)."""

    cdef object loop
    cdef object transport
    cdef bytearray out               # frames waiting for the end of this loop iteration
    cdef bint scheduled
    cdef bint lost                   # the connection is gone: frames are dropped
    cdef bytearray buf               # the start of a frame cut by a chunk's end
    cdef Py_ssize_t need             # bytes buf must hold before it is parsed again

    def __cinit__(self):
        self.out = bytearray()

    cdef int send(self, object msg) except -1:
        """Queues MSG's frame for the end of this loop iteration (see _append_frame for the
        CodecError; nothing is queued then); dropped if the connection is gone."""
        global _frames_out
        _append_frame(self.out, msg)
        if self.lost:
            self.out.clear()
            return 0
        _frames_out += 1
        if not self.scheduled and self.transport is not None:
            self.scheduled = True
            self.loop.call_soon(self.flush)
        return 0

    def flush(self):
        global _writes_out
        self.scheduled = False
        if not self.out or self.transport is None:
            return
        if not self.transport.is_closing():
            self.transport.write(bytes(self.out))
            _writes_out += 1
        self.out.clear()

    def connection_made(self, transport):
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        if self.out and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    def eof_received(self):
        return None

    def data_received(self, data):
        cdef bytes chunk
        if self.buf is not None:
            self.buf += data
            if len(self.buf) < self.need:
                return
            chunk = bytes(self.buf)
            self.buf = None
        else:
            chunk = bytes(data)
        self._parse(chunk)

    cdef void _parse(self, bytes chunk) except *:
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pos = 0
        cdef uint32_t n = 0
        while size - pos >= 4:
            n = ((<uint32_t>p[pos] << 24) | (<uint32_t>p[pos + 1] << 16)
                 | (<uint32_t>p[pos + 2] << 8) | <uint32_t>p[pos + 3])
            if n > _MAX_FRAME:
                self.broken(f"a frame of {n} bytes")
                return
            if size - pos - 4 < <Py_ssize_t>n:
                break
            try:
                msg = decode_value(chunk[pos + 4:pos + 4 + n])
            except CodecError as e:
                self.broken(f"an undecodable frame ({e})")
                return
            pos += 4 + n
            self.on_message(msg)
            if self.transport is None:
                return
        if pos < size:
            self.buf = bytearray(chunk[pos:])
            self.need = 4 if size - pos < 4 else 4 + <Py_ssize_t>n

    cdef void broken(self, str why) except *:
        _ipc_log.error("closing a worker channel: %s", why)
        self.buf = None
        if self.transport is not None:
            self.transport.abort()

    cdef void on_message(self, object msg) except *:
        pass


@cython.final
@cython.freelist(256)
cdef class _Reply:
    """The owner's end of one call, given to the shard in place of the call's future: the
    shard (or the output gate, once the turn's writes are durable) resolves it as it would
    the future, and that sends the reply or the error to the caller at once. No future and no
    loop callback per call; done, set_result and set_exception never raise (they run inside
    the gate's release of a whole batch)."""

    cdef CallServer conn
    cdef object call_id
    cdef bint fetch
    cdef bint sent

    def done(self):
        return self.sent

    def set_result(self, value):
        cdef Response r
        if self.sent:
            return
        self.sent = True
        if not self.fetch:
            self._send([self.call_id, True, value])
        else:                           # the shard only resolves a fetch with a Response
            r = <Response>value
            self._send([self.call_id, True,
                        [r.status, [[k, v] for k, v in r._headers._items], r.body]])

    def set_exception(self, exc):
        if self.sent:
            return
        self.sent = True
        self._send([self.call_id, False, _error_tuple(exc)])

    cdef void _send(self, list msg):
        try:
            try:
                self.conn.send(msg)
            except CodecError as e:
                self.conn.send([self.call_id, False, _error_tuple(e)])
        except BaseException:          # not the gate's to handle: log it, go on
            _ipc_log.exception("sending the reply of call %r", self.call_id)


cdef class CallServer(_FrameConn):
    """The owner's end of one peer's channel: runs each call on the shard as a local call.
    NAMESPACES maps "account/type" to this worker's ActorNamespace of that type."""

    cdef dict namespaces
    cdef object stats                # () -> this worker's counters, or None
    cdef object __weakref__

    def __init__(self, dict namespaces, stats=None):
        self.namespaces = namespaces
        self.stats = stats

    def close(self):
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self):
        # The peer is not reading its replies: take no more of its calls until it does, so
        # the replies waiting here stay bounded.
        _reading(self.transport, False)

    def resume_writing(self):
        _reading(self.transport, True)

    def connection_lost(self, exc):
        self.transport = None          # replies still due are dropped: the caller is gone
        self.lost = True
        self.out.clear()

    cdef void on_message(self, object msg) except *:
        cdef ActorNamespace ns
        cdef _Reply reply
        try:
            call_id, key, name, kind, method, args, kwargs, chain = msg
        except (TypeError, ValueError):
            self.broken("a malformed call frame")
            return
        if chain is not None and type(chain) is not list:
            self.broken("a malformed call chain")
            return
        if kind == _KIND_STATS:
            try:
                if self.stats is None:
                    raise LookupError("this worker keeps no counters")
                self.send([call_id, True, self.stats()])
            except Exception as e:
                self.send([call_id, False, _error_tuple(e)])
            return
        global _calls_in
        _calls_in += 1
        reply = _Reply.__new__(_Reply)
        reply.conn = self
        reply.call_id = call_id
        reply.fetch = kind == KIND_FETCH
        try:
            ns = self.namespaces[key]
            stub = ns.stub(name)
            # The arguments were decoded from the frame: nobody else holds them, so the
            # shard need not copy them.
            if kind == KIND_FETCH:
                m, url, headers, body = args
                ns.shard.call(stub, KIND_FETCH, "fetch", (Request(m, url, headers, body),),
                              None, chain, reply, True)
            else:
                ns.shard.call(stub, KIND_CALL, method, tuple(args), kwargs or None, chain,
                              reply, True)
        except BaseException as e:     # the caller gets it, as the local call would have
            reply.set_exception(e)


cdef class _Peer(_FrameConn):
    """The caller's end of the channel to one owner worker."""

    cdef Channel channel
    cdef int owner
    cdef dict waiting                # call id -> future of the reply
    cdef set fetches                 # ids of fetch calls (their reply becomes a Response)

    def __cinit__(self):
        self.waiting = {}
        self.fetches = set()

    cdef void on_message(self, object msg) except *:
        cdef Response r
        try:
            call_id, ok, value = msg
        except (TypeError, ValueError):
            self.broken("a malformed reply frame")
            return
        fut = self.waiting.pop(call_id, None)
        if fut is None or fut.done():
            self.fetches.discard(call_id)
            return
        if not ok:
            self.fetches.discard(call_id)
            fut.set_exception(_error_from(value))
        elif self.fetches and call_id in self.fetches:
            self.fetches.discard(call_id)
            try:
                status, headers, body = value
                r = Response(body, status, headers)
            except (TypeError, ValueError) as e:
                fut.set_exception(ActorMethodError(f"a malformed fetch reply: {e}", "?"))
            else:
                fut.set_result(r)
        else:
            fut.set_result(value)

    def connection_lost(self, exc):
        self.transport = None
        self.lost = True
        self.fail(ActorOutputGateError(
            f"the worker owning the instance went away (worker {self.owner}); the call may "
            "or may not have been carried out"))

    cdef void fail(self, object err):
        self.lost = True
        if self.channel.peers[self.owner] is self:
            self.channel.peers[self.owner] = None
        waiting = self.waiting
        self.waiting = {}
        self.fetches.clear()
        self.out.clear()
        for fut in waiting.values():
            if not fut.done():
                # An error of its own for each caller: one raised in every caller would
                # carry all their tracebacks, one after another.
                fut.set_exception(type(err)(*err.args))


cdef class Channel:
    """This worker's connections to the others (PATHS: every worker's socket, by index),
    each opened on first use. Make it inside the worker's running loop."""

    cdef list paths
    cdef list peers
    cdef uint64_t next_id
    cdef object loop

    def __init__(self, list paths):
        self.paths = paths
        self.peers = [None] * len(paths)
        self.loop = asyncio.get_running_loop()

    cpdef object call(self, int owner, str key, str name, int kind, str method, tuple args,
                      object kwargs):
        """Sends the call to worker OWNER; the future of its reply. CodecError at once if an
        argument can not be sent."""
        cdef _Peer peer
        global _calls_out
        cdef _TurnTask caller = _calling_turn(self.loop)
        self.next_id += 1
        call_id = self.next_id
        peer = self.peers[owner]
        if peer is None:
            peer = self._open(owner)
        # Lists, not tuples: plain values take the codec's fast path (args' own items keep
        # their types; the owner makes the list a tuple again). A CodecError leaves nothing.
        peer.send([call_id, key, name, kind, method, list(args), kwargs,
                   None if caller is None else _outgoing_chain(caller)])
        _calls_out += 1
        fut = CallFuture(loop=self.loop)
        if caller is not None:
            _made_call(caller, fut)
        peer.waiting[call_id] = fut
        if kind == KIND_FETCH:
            peer.fetches.add(call_id)
        return fut

    cdef _Peer _open(self, int owner):
        cdef _Peer peer = _Peer.__new__(_Peer)
        peer.channel = self
        peer.owner = owner
        peer.loop = self.loop
        self.peers[owner] = peer
        self.loop.create_task(self._connect(peer))
        return peer

    async def _connect(self, _Peer peer):
        path = self.paths[peer.owner]
        for _ in range(100):
            try:
                await self.loop.create_unix_connection(lambda: peer, path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)  # the peer is (re)starting
            except OSError as e:
                peer.fail(ConnectionError(f"worker {peer.owner} does not answer: {e}"))
                return
        peer.fail(ConnectionError(f"worker {peer.owner} does not answer"))

    def close(self):
        for peer in self.peers:
            if peer is not None:
                (<_Peer>peer).flush()
                if (<_Peer>peer).transport is not None:
                    (<_Peer>peer).transport.close()


@cython.final
@cython.freelist(64)
cdef class _RemoteMethod:
    cdef RemoteStub stub
    cdef str name

    def __call__(self, *args, **kwargs):
        cdef RoutedNamespace ns = self.stub._ns
        err = ns.local.check_method(self.name)
        if err is not None:
            raise err
        return ns.channel.call(self.stub._owner, ns.key, self.stub.id, KIND_CALL, self.name,
                               args, kwargs or None)

    def __repr__(self):
        return f"<remote method {self.name} of {self.stub!r}>"


@cython.final
cdef class RemoteStub:
    """A stub for an instance another worker owns; the same surface as ActorStub."""

    cdef readonly str id
    cdef RoutedNamespace _ns
    cdef int _owner

    def __getattribute__(self, str name):
        cdef _RemoteMethod m
        if name in _STUB_OWN or name.startswith("__"):
            return PyObject_GenericGetAttr(self, name)
        m = _RemoteMethod.__new__(_RemoteMethod)
        m.stub = self
        m.name = name
        return m

    def fetch(self, request, *, method=None, headers=None, body=None):
        cdef Request r = _fetch_input(request, method, headers, body)
        headers = [[k, v] for k, v in (<Headers>r.headers)._items]
        return self._ns.channel.call(self._owner, self._ns.key, self.id, KIND_FETCH, "fetch",
                                     (r.method, r.url, headers, r._body), None)

    def __eq__(self, other):
        return (isinstance(other, RemoteStub) and (<RemoteStub>other).id == self.id
                and (<RemoteStub>other)._ns is self._ns)

    def __hash__(self):
        return hash((self._ns.type_name, self.id))

    def __repr__(self):
        return f"<ActorStub {self._ns.type_name} {self.id!r} (worker {self._owner})>"


@cython.final
cdef class RoutedNamespace:
    """``env.<BINDING>`` under ``serve``: stubs of instances this worker owns are local ones;
    the others go through the channel to their owner."""

    cdef readonly ActorNamespace local
    cdef readonly str account
    cdef readonly str type_name
    cdef readonly str key
    cdef int me
    cdef int workers
    cdef Channel channel
    cdef uint32_t seed               # crc32c of "account\0type\0"

    def __init__(self, ActorNamespace local, str account, str type_name, int me, int workers,
                 Channel channel):
        if workers < 1 or not 0 <= me < workers:
            raise ValueError(f"worker {me} of {workers}")
        self.local = local
        self.account = account
        self.type_name = type_name
        self.key = f"{account}/{type_name}"
        self.me = me
        self.workers = workers
        self.channel = channel
        cdef bytes prefix = f"{account}\0{type_name}\0".encode()
        self.seed = cwal.fa_crc32c(0, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))

    cpdef int owner(self, str name) except -1:
        """The worker that serves instance NAME."""
        cdef bytes b = name.encode()
        cdef uint32_t h = cwal.fa_crc32c(self.seed, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        return <int>((h % _PARTITIONS) % <uint32_t>self.workers)

    def id_from_name(self, name, *, location_hint=None):
        cdef ActorStub local = self.local.stub(name)        # checks the name
        cdef RemoteStub r
        cdef int owner = self.owner(name)
        if owner == self.me:
            return local
        r = RemoteStub.__new__(RemoteStub)
        r.id = name
        r._ns = self
        r._owner = owner
        return r

    def new_unique_id(self, *, location_hint=None):
        return self.id_from_name(secrets.token_hex(32))

    def get_by_name(self, name, *, location_hint=None):
        return self.id_from_name(name)

    def id_from_string(self, id):
        return self.id_from_name(_unique_id(id))

    def get(self, stub, *, location_hint=None):
        if type(stub) is str:
            return self.id_from_name(stub)
        if ((type(stub) is RemoteStub and (<RemoteStub>stub)._ns is self) or
                (type(stub) is ActorStub and (<ActorStub>stub)._ns is self.local)):
            return stub
        raise _foreign_stub(stub, self.type_name)

    def __repr__(self):
        return f"<ActorNamespace {self.type_name}>"
