# The C timing wheel (csrc/timerwheel.h). Declarations only; see the header for the design.
from libc.stdint cimport uint64_t


cdef extern from "timerwheel.h" nogil:
    ctypedef struct fa_wheel:
        pass

    uint64_t FA_WHEEL_MAX_TIME
    uint64_t FA_WHEEL_NONE

    fa_wheel *fa_wheel_new(uint64_t now)
    void fa_wheel_free(fa_wheel *w)
    int fa_wheel_add(fa_wheel *w, uint64_t when, uint64_t data, uint64_t *handle)
    int fa_wheel_cancel(fa_wheel *w, uint64_t handle, uint64_t *data)
    uint64_t fa_wheel_next(const fa_wheel *w)
    size_t fa_wheel_advance(fa_wheel *w, uint64_t target, uint64_t *out, size_t max)
    uint64_t fa_wheel_now(const fa_wheel *w)
    size_t fa_wheel_count(const fa_wheel *w)
    size_t fa_wheel_memory(const fa_wheel *w)
