# TimerWheel: the C timing wheel (csrc/timerwheel.c) holding Python objects. Included by
# _core.pyx.

cdef enum:
    _ADVANCE_CHUNK = 256


@cython.final
cdef class TimerWheel:
    """Timers due at a millisecond time (an int), each carrying one Python object.

    ``add(when, obj)`` returns a handle for ``cancel``; ``advance(now)`` returns the objects
    of every timer due at or before NOW (a past ``when`` is due at the next advance);
    ``next_due()`` is when to call ``advance`` next (a lower bound; None when empty).
    Insert and cancel are O(1); see csrc/timerwheel.h."""

    cdef ctw.fa_wheel *_w

    def __cinit__(self, uint64_t now):
        self._w = ctw.fa_wheel_new(now)
        if self._w is NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef uint64_t buf[_ADVANCE_CHUNK]
        cdef size_t n, i
        if self._w is NULL:
            return
        while True:                        # drop the references the timers hold
            n = ctw.fa_wheel_advance(self._w, ctw.FA_WHEEL_MAX_TIME, buf, _ADVANCE_CHUNK)
            for i in range(n):
                Py_DECREF(<object><PyObject *>buf[i])
            if n < _ADVANCE_CHUNK:
                break
        ctw.fa_wheel_free(self._w)
        self._w = NULL

    cpdef uint64_t add(self, uint64_t when, object obj) except? 0:
        cdef uint64_t handle
        if ctw.fa_wheel_add(self._w, when, <uint64_t><PyObject *>obj, &handle) != 0:
            if when > ctw.FA_WHEEL_MAX_TIME:
                raise ValueError(f"timer time {when} is past the wheel's range")
            raise MemoryError()
        Py_INCREF(obj)
        return handle

    cpdef object cancel(self, uint64_t handle):
        """The object of the pending timer HANDLE, now cancelled; None if not pending."""
        cdef uint64_t data
        if ctw.fa_wheel_cancel(self._w, handle, &data) != 0:
            return None
        obj = <object><PyObject *>data
        Py_DECREF(obj)                     # the wheel's reference; `obj` holds its own
        return obj

    cpdef list advance(self, uint64_t now):
        cdef uint64_t buf[_ADVANCE_CHUNK]
        cdef size_t n, i
        cdef list out = []
        while True:
            n = ctw.fa_wheel_advance(self._w, now, buf, _ADVANCE_CHUNK)
            for i in range(n):
                obj = <object><PyObject *>buf[i]
                out.append(obj)
                Py_DECREF(obj)
            if n < _ADVANCE_CHUNK:
                return out

    def next_due(self):
        cdef uint64_t t = ctw.fa_wheel_next(self._w)
        return None if t == ctw.FA_WHEEL_NONE else t

    @property
    def now(self):
        return ctw.fa_wheel_now(self._w)

    @property
    def memory(self):
        """Bytes of C memory the wheel holds (not counting the objects)."""
        return ctw.fa_wheel_memory(self._w)

    def __len__(self):
        return ctw.fa_wheel_count(self._w)
