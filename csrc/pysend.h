/*
 * pysend.h: one step of a coroutine without the StopIteration a finished one raises through
 * send() (PyIter_Send hands back the return value instead). Used by the dispatcher and the
 * HTTP front, which drive coroutines themselves.
 */
#ifndef FA_PYSEND_H
#define FA_PYSEND_H

#include <Python.h>

/*
 * Sends ARG into CORO. Returns a new reference: the value the coroutine yielded (*returned
 * set to 0) or its return value (*returned set to 1); NULL with the exception set if it
 * raised.
 */
static inline PyObject *
fa_coro_send(PyObject *coro, PyObject *arg, int *returned)
{
    PyObject *result = NULL;
    PySendResult r = PyIter_Send(coro, arg, &result);
    if (r == PYGEN_ERROR)
        return NULL;
    *returned = r == PYGEN_RETURN;
    return result;
}

#endif
