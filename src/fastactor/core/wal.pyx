# The write-ahead log, bound for asyncio: appends are a memcpy on the loop thread, durability
# is awaited on futures that one callback releases per flushed batch. Included by _core.pyx.

cdef object _wal_logger = logging.getLogger("fastactor.wal")

cdef dict _FAULT_OPS = {"write": cwal.FA_FAULT_WRITE, "fdatasync": cwal.FA_FAULT_FDATASYNC,
                        "halt": cwal.FA_FAULT_HALT}


cdef object _open_error(int rc, const char *msg):
    text = msg.decode("utf-8", "replace")
    if rc == -errno.EBADMSG:
        return LogCorruptionError(text)
    if rc == -errno.ERANGE or rc == -errno.EINVAL:
        return ValueError(text)
    return OSError(-rc, f"{text}: {os.strerror(-rc)}")


cdef object _failed_error(int rc):
    return LogFailedError(
        -rc, f"the log stopped after a failed write or fdatasync ({os.strerror(-rc)}); "
             "records not yet durable are lost and the log must be reopened")


@cython.final
cdef class WriteAheadLog:
    """A segmented, checksummed, group-committed log in one directory (see csrc/wal.h).

    ``append`` returns the record's LSN at once; ``await wait_durable(lsn)`` returns once the
    record is on disk. Opening recovers the log (a torn tail is cut and logged once)."""

    cdef cwal.fa_wal *_w
    cdef readonly str path
    cdef readonly dict recovery
    cdef uint32_t _max_record
    cdef object _loop
    # Waiters are (lsn, future, value, mode): mode 0 finishes the future with None (or
    # LogFailedError), 1 with value, 2 by raising value (or reply_error if the log fails).
    cdef object _waiters          # deque of waiters, LSNs non-decreasing
    cdef list _stragglers         # heap of (lsn, seq, waiter) waited for out of order
    cdef uint64_t _seq
    cdef uint64_t _tail_lsn       # LSN of the last entry of _waiters
    cdef object _done             # a finished future on _loop, awaited without a suspension
    cdef public object reply_error  # what held replies fail with when the log fails

    def __cinit__(self, path, *, uint64_t segment_size=64 << 20,
                  uint32_t max_record=32 << 20, uint64_t max_pending=1 << 30,
                  uint32_t group_delay_us=0, uint32_t group_min_records=16,
                  uint64_t group_bytes=256 << 10, uint32_t group_window_us=0,
                  uint32_t group_window_records=16):
        cdef cwal.fa_wal_options opts
        cdef cwal.fa_wal_recovery rec
        cdef char err[1024]
        cdef int rc
        cdef bytes bpath = os.fsencode(path)
        cdef const char *cpath = bpath
        self._w = NULL
        self.path = os.fsdecode(path)
        os.makedirs(self.path, exist_ok=True)
        cwal.fa_wal_options_init(&opts)
        opts.segment_size = segment_size
        opts.max_record = max_record
        opts.max_pending = max_pending
        opts.group_delay_us = group_delay_us
        opts.group_min_records = group_min_records
        opts.group_bytes = group_bytes
        opts.group_window_us = group_window_us
        opts.group_window_records = group_window_records
        err[0] = 0
        with nogil:
            rc = cwal.fa_wal_open(cpath, &opts, &self._w, &rec, err, sizeof(err))
        if rc < 0:
            raise _open_error(rc, err)
        self._max_record = max_record
        self._waiters = collections.deque()
        self._stragglers = []
        self._seq = 0
        self._loop = None
        self._done = None
        self.recovery = {
            "first_lsn": rec.first_lsn,
            "next_lsn": rec.next_lsn,
            "segments": rec.segments,
            "tmp_removed": rec.tmp_removed,
            "torn_file": rec.torn_file.decode() if rec.torn_bytes else None,
            "torn_offset": rec.torn_offset if rec.torn_bytes else None,
            "torn_bytes": rec.torn_bytes,
        }
        if rec.torn_bytes:
            _wal_logger.warning(
                "%s/%s: cut a torn tail of %d bytes at byte offset %d "
                "(a write the last crash interrupted; none of it was acknowledged)",
                self.path, rec.torn_file.decode(), rec.torn_bytes, rec.torn_offset)

    def __dealloc__(self):
        if self._w is not NULL:
            with nogil:
                cwal.fa_wal_close(self._w, NULL)
            self._w = NULL

    cdef inline int _check_open(self) except -1:
        if self._w is NULL:
            raise ValueError("the log is closed")
        return 0

    cpdef uint64_t append(self, object data, uint16_t type=0) except 0:
        """Adds one record to the current batch and returns its LSN; no system call."""
        cdef uint64_t lsn = 0
        cdef int rc
        cdef Py_buffer view
        self._check_open()
        if PyBytes_CheckExact(data):
            rc = cwal.fa_wal_append(self._w, type, PyBytes_AS_STRING(data),
                                    <size_t>PyBytes_GET_SIZE(data), &lsn)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                rc = cwal.fa_wal_append(self._w, type, view.buf, <size_t>view.len, &lsn)
            finally:
                PyBuffer_Release(&view)
        if rc < 0:
            raise self._append_error(rc, len(data))
        return lsn

    cdef object _append_error(self, int rc, Py_ssize_t n):
        if rc == -errno.EMSGSIZE:
            return ValueError(f"log record of {n} bytes is larger than max_record "
                              f"({self._max_record} bytes)")
        if rc == -errno.ENOBUFS:
            return BlockingIOError(errno.ENOBUFS, "too many bytes wait to be written to the "
                                   "log (max_pending); wait for durability first")
        if rc == -errno.ENOMEM:
            return MemoryError()
        return _failed_error(rc)

    def wait_durable(self, uint64_t lsn):
        """An awaitable that finishes once record LSN is on disk, or raises LogFailedError.
        All waits of one log belong to the event loop that awaited it first."""
        cdef object fut
        cdef int rc
        if self._w is NULL:
            raise ValueError("the log is closed")
        if self._loop is None:
            self._bind_loop()
        if lsn <= cwal.fa_wal_durable_lsn(self._w):
            return self._done
        rc = cwal.fa_wal_error(self._w)
        if rc != 0:
            fut = self._loop.create_future()
            fut.set_exception(_failed_error(rc))
            return fut
        if lsn > cwal.fa_wal_last_lsn(self._w):
            raise ValueError(f"LSN {lsn} has not been appended")
        fut = self._loop.create_future()
        self._hold(lsn, fut, None, 0)
        return fut

    cdef _hold(self, uint64_t lsn, object fut, object value, int mode):
        """Finishes FUT (see the waiter modes above) once LSN is durable."""
        if self._loop is None:
            self._bind_loop()
        w = (lsn, fut, value, mode)
        rc = cwal.fa_wal_error(self._w)
        if rc != 0 and lsn > cwal.fa_wal_durable_lsn(self._w):
            self._finish(w, rc)              # the log failed: this LSN will never be durable
            return
        if lsn >= self._tail_lsn or not self._waiters:
            self._waiters.append(w)
            self._tail_lsn = lsn
        else:
            self._seq += 1
            heapq.heappush(self._stragglers, (lsn, self._seq, w))
        cwal.fa_wal_kick(self._w)

    def bind_loop(self, loop):
        """Serves LOOP from now on (otherwise the loop that first awaits the log)."""
        self._check_open()
        if self._loop is not None:
            raise RuntimeError("the log already serves an event loop")
        self._bind_loop(loop)

    cdef _bind_loop(self, loop=None):
        if loop is None:
            loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = loop.create_future()
        self._done.set_result(None)
        loop.add_reader(cwal.fa_wal_event_fd(self._w), self._on_event)

    def _on_event(self):
        cwal.fa_wal_drain_event(self._w)
        self._release(cwal.fa_wal_durable_lsn(self._w), cwal.fa_wal_error(self._w))

    cdef _release(self, uint64_t durable, int rc):
        cdef object waiters = self._waiters
        cdef list stragglers = self._stragglers
        while waiters and (<tuple>waiters[0])[0] <= durable:
            self._finish(<tuple>waiters.popleft(), 0)
        while stragglers and (<tuple>stragglers[0])[0] <= durable:
            self._finish(<tuple>(<tuple>heapq.heappop(stragglers))[2], 0)
        if rc != 0:
            for w in waiters:
                self._finish(<tuple>w, rc)
            for s in stragglers:
                self._finish(<tuple>(<tuple>s)[2], rc)
            waiters.clear()
            stragglers.clear()

    cdef _finish(self, tuple w, int rc):
        fut = w[1]
        if fut.done():
            return
        mode = w[3]
        if rc != 0:
            if mode == 0 or self.reply_error is None:
                fut.set_exception(_failed_error(rc))
            else:
                fut.set_exception(self.reply_error(
                    f"the writes could not be made durable ({os.strerror(-rc)})"))
        elif mode == 0:
            fut.set_result(None)
        elif mode == 1:
            fut.set_result(w[2])
        else:
            fut.set_exception(w[2])

    def sync(self, uint64_t lsn):
        """Blocks the calling thread until LSN is durable (for code without an event loop)."""
        cdef int rc
        self._check_open()
        with nogil:
            rc = cwal.fa_wal_wait(self._w, lsn)
        if rc == -errno.EINVAL:
            raise ValueError(f"LSN {lsn} has not been appended")
        if rc < 0:
            raise _failed_error(rc)

    @property
    def durable_lsn(self) -> int:
        self._check_open()
        return cwal.fa_wal_durable_lsn(self._w)

    @property
    def last_lsn(self) -> int:
        self._check_open()
        return cwal.fa_wal_last_lsn(self._w)

    @property
    def first_lsn(self) -> int:
        self._check_open()
        return cwal.fa_wal_first_lsn(self._w)

    @property
    def batches(self) -> int:
        self._check_open()
        return cwal.fa_wal_batches(self._w)

    def stats(self):
        """Counters since open: batches, records, bytes written, and the latency of each
        write + fdatasync as a histogram: ``flush_us`` maps each bucket's upper bound in
        µs (the last is inf) to its count, not cumulative; ``segment`` (the file being
        written) and ``segment_synced`` (how many of its bytes are known durable)."""
        cdef cwal.fa_wal_stats st
        self._check_open()
        cwal.fa_wal_get_stats(self._w, &st)
        bounds = [cwal.fa_wal_latency_bounds_us[i] for i in range(11)] + [float("inf")]
        return {"batches": st.batches, "records": st.records, "bytes": st.bytes,
                "flush_us_sum": st.flush_us_sum,
                "segment": f"wal-{st.seg_seqno:016x}.log", "segment_synced": st.seg_synced,
                "flush_us": {b: st.flush_us_count[i] for i, b in enumerate(bounds)}}

    @property
    def failed(self):
        """None while healthy, else the LogFailedError that stopped the log."""
        self._check_open()
        rc = cwal.fa_wal_error(self._w)
        return _failed_error(rc) if rc else None

    @property
    def closed(self) -> bool:
        return self._w is NULL

    def checkpoint(self, uint64_t lsn):
        """Everything up to LSN is in a durable snapshot: removes the segments it covers and
        returns how many. Blocks on the filesystem (run it in an executor from a loop)."""
        cdef int rc
        self._check_open()
        with nogil:
            rc = cwal.fa_wal_checkpoint(self._w, lsn)
        if rc == -errno.EINVAL:
            raise ValueError(f"LSN {lsn} is not durable yet")
        if rc < 0:
            raise OSError(-rc, f"{self.path}: checkpoint failed: {os.strerror(-rc)}")
        return rc

    def replay(self, uint64_t start=1, upto=None):
        """Iterates (lsn, type, payload) for durable records from START, checking each CRC."""
        self._check_open()
        return LogReader(self.path, start,
                         cwal.fa_wal_durable_lsn(self._w) if upto is None else upto)

    def _inject_fault(self, str op, uint32_t after, int err):
        """Test hook: the (AFTER+1)-th next OP ('write' or 'fdatasync') fails with ERR; 'halt'
        fails an fdatasync but leaves its batch in the file, as a power cut would."""
        self._check_open()
        if cwal.fa_wal_inject_fault(self._w, _FAULT_OPS[op], after, err) < 0:
            raise ValueError("bad fault")

    cdef cwal.fa_wal *_detach(self):
        """Stops watching the event fd and hands over the C log (NULL if already closed)."""
        cdef cwal.fa_wal *w = self._w
        if w is not NULL and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(cwal.fa_wal_event_fd(w))
        self._w = NULL
        return w

    def close(self):
        """Writes what was appended, stops the flusher and releases every waiter."""
        cdef int rc
        cdef uint64_t durable = 0
        cdef cwal.fa_wal *w = self._detach()
        if w is NULL:
            return
        with nogil:
            rc = cwal.fa_wal_close(w, &durable)
        self._release(durable, rc)
        if rc < 0:
            raise _failed_error(rc)

    def _abandon(self):
        """Test hook: stops like a crash would: what was appended but not yet handed to the
        flusher is dropped, and no waiter is ever released."""
        cdef cwal.fa_wal *w = self._detach()
        if w is NULL:
            return
        with nogil:
            cwal.fa_wal_abort(w)
        self._waiters.clear()
        self._stragglers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self._w is NULL:
            return f"<WriteAheadLog {self.path!r} closed>"
        return (f"<WriteAheadLog {self.path!r} last_lsn={self.last_lsn} "
                f"durable_lsn={self.durable_lsn}>")


@cython.final
cdef class LogReader:
    """Iterates (lsn, type, payload) over a log directory without opening it for writing.
    Once read to its end, ``next_lsn`` is one past the log's last valid record (0: the
    directory holds no segment)."""

    cdef cwal.fa_wal_reader *_r
    cdef readonly uint64_t next_lsn

    def __cinit__(self, path, uint64_t start=1, uint64_t upto=0):
        cdef char err[1024]
        cdef int rc
        cdef bytes bpath = os.fsencode(path)
        cdef const char *cpath = bpath
        self._r = NULL
        err[0] = 0
        with nogil:
            rc = cwal.fa_wal_reader_open(cpath, start, upto, &self._r, err, sizeof(err))
        if rc < 0:
            raise _open_error(rc, err)

    def __dealloc__(self):
        if self._r is not NULL:
            cwal.fa_wal_reader_close(self._r)
            self._r = NULL

    def __iter__(self):
        return self

    def __next__(self):
        cdef cwal.fa_wal_record rec
        cdef char err[1024]
        cdef int rc
        if self._r is NULL:
            raise StopIteration
        rc = cwal.fa_wal_reader_next(self._r, &rec, err, sizeof(err))
        if rc == 1:
            return (rec.lsn, rec.type, PyBytes_FromStringAndSize(<const char *>rec.data, rec.len))
        if rc == 0:
            self.next_lsn = cwal.fa_wal_reader_next_lsn(self._r)
        cwal.fa_wal_reader_close(self._r)
        self._r = NULL
        if rc == 0:
            raise StopIteration
        raise _open_error(rc, err)


def write_file_atomic(path, data):
    """Writes DATA to PATH so that a crash leaves the old file or the new one, never a mix:
    temporary file, fdatasync, rename, fsync of the directory."""
    cdef int rc
    cdef bytes bdir = os.fsencode(os.path.dirname(os.path.abspath(path)))
    cdef bytes bname = os.fsencode(os.path.basename(path))
    cdef const char *cdir = bdir
    cdef const char *cname = bname
    cdef const unsigned char[::1] view = memoryview(data).cast("B")
    cdef const void *buf = &view[0] if view.shape[0] else <const void *>cdir
    cdef size_t n = view.shape[0]
    with nogil:
        rc = cwal.fa_write_file_atomic(cdir, cname, buf, n)
    if rc < 0:
        raise OSError(-rc, f"{os.fsdecode(path)}: atomic write failed: {os.strerror(-rc)}")


def crc32c(data, uint32_t crc=0):
    """CRC-32C of DATA, continuing from CRC."""
    cdef const unsigned char[::1] view = memoryview(data).cast("B")
    if view.shape[0] == 0:
        return crc
    return cwal.fa_crc32c(crc, &view[0], view.shape[0])


def crc32c_hardware():
    """True when CRC-32C uses the CPU instruction (SSE4.2 or ARMv8 CRC)."""
    return bool(cwal.fa_crc32c_hardware())
