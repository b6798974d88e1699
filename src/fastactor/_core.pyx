# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
#
# The one extension module of fastactor. Its parts live in core/*.pyx and are included here
# so that every cdef call stays inside one C unit.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.object cimport PyObject, PyObject_GenericGetAttr
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeLatin1
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcmp, memcpy
from libc.time cimport time as c_time, time_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "Python.h":
    bint PyCoro_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    const char *_utf8 "PyUnicode_AsUTF8AndSize"(object o, Py_ssize_t *size) except NULL
    int PyUnicode_KIND(object o)
    enum: PyUnicode_1BYTE_KIND
    object PyContext_CopyCurrent()
    object PyContext_Copy(object ctx)
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    ctypedef struct PyFrameObject
    PyFrameObject *PyEval_GetFrame()
    object PyFrame_GetCode(PyFrameObject *frame)

cdef extern from "pysend.h":
    object fa_coro_send(object coro, object arg, int *returned)

from .includes cimport timerwheel as ctw
from .includes cimport wal as cwal

import asyncio
import collections
import collections.abc
import concurrent.futures
import datetime
import decimal
import errno
import functools
import heapq
import logging
import math
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
import traceback
import types
import urllib.parse
import uuid
import zoneinfo

import httptools
import msgspec

from .errors import (ActorDeadlockError, ActorFetchTimeoutError, ActorMethodError,
                     ActorMethodTimeoutError, ActorOutputGateError, ActorPrivateMethodError,
                     ActorUnknownMethodError, BlockConcurrencyTimeoutError, CodecError,
                     LogCorruptionError, LogFailedError, StorageLimitError, remote_error)

include "core/wal.pyx"
include "core/wheel.pyx"
include "core/codec.pyx"
include "core/storage.pyx"
include "core/dispatcher.pyx"
include "core/http.pyx"
include "core/channel.pyx"
