# The value codec: MessagePack (msgspec) with extension types, so that every type SPEC §3
# names comes back as the same type and value, and everything else is refused with
# CodecError at the write or the call. Included by _core.pyx.
#
# A value is first walked (exact types only: a subclass of dict or int is not "the same
# type"), turning what MessagePack can not say by itself into Ext(code, payload). The walk
# also catches cycles and absurd depth. Plain scalars skip the walk.

cdef enum:
    EXT_BIGINT = 1
    EXT_TUPLE = 2
    EXT_SET = 3
    EXT_FROZENSET = 4
    EXT_DICT = 5        # a dict with a key that is not a str: [k1, v1, k2, v2, ...]
    EXT_DATETIME = 6
    EXT_DATE = 7
    EXT_TIME = 8
    EXT_TIMEDELTA = 9
    EXT_DECIMAL = 10
    EXT_UUID = 11
    EXT_PATTERN = 12
    MAX_DEPTH = 256

cdef object _Ext = msgspec.msgpack.Ext
cdef object _encoder = msgspec.msgpack.Encoder()
cdef object _encode = _encoder.encode
cdef object _encode_into = _encoder.encode_into
cdef object _uint64_max = (1 << 64) - 1
cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object v, int *overflow) except? -1


cdef inline bint _fits_64(object v) except -1:
    """True if the int V fits MessagePack's 64 bits (signed, or unsigned): a C conversion, and
    the comparison with the bounds only past the signed range."""
    cdef int overflow = 0
    PyLong_AsLongLongAndOverflow(v, &overflow)
    return overflow == 0 or (overflow > 0 and v <= _uint64_max)


cdef type _datetime = datetime.datetime
cdef type _date = datetime.date
cdef type _time = datetime.time
cdef type _timedelta = datetime.timedelta
cdef type _ZoneInfo = zoneinfo.ZoneInfo
cdef type _ZoneInfoNotFound = zoneinfo.ZoneInfoNotFoundError
cdef type _Decimal = decimal.Decimal
cdef type _UUID = uuid.UUID
cdef type _Pattern = re.Pattern


cdef class _Walk:
    cdef set active      # ids of the containers on the current path

    def __cinit__(self):
        self.active = set()

    cdef object enter(self, object v, int depth):
        cdef object i = id(v)
        if i in self.active:
            raise CodecError("cannot store a value that contains itself")
        if depth > MAX_DEPTH:
            raise CodecError(f"value nested more than {MAX_DEPTH} levels deep")
        self.active.add(i)
        return i

    cdef list seq(self, object items, int depth):
        return [self.walk(x, depth) for x in items]

    cdef object walk(self, object v, int depth):
        cdef type t = type(v)
        cdef object i
        cdef list flat
        if t is str or t is float or t is bool or v is None or t is bytes:
            return v
        if t is int:
            if _fits_64(v):
                return v
            n = (v.bit_length() + 8) // 8
            return _Ext(EXT_BIGINT, v.to_bytes(n, "big", signed=True))
        if t is list:
            i = self.enter(v, depth)
            r = self.seq(v, depth + 1)
            self.active.discard(i)
            return r
        if t is dict:
            i = self.enter(v, depth)
            for k in v:
                if type(k) is not str:
                    break
            else:
                r = {k: self.walk(x, depth + 1) for k, x in (<dict>v).items()}
                self.active.discard(i)
                return r
            flat = []
            for k, x in (<dict>v).items():
                flat.append(self.walk(k, depth + 1))
                flat.append(self.walk(x, depth + 1))
            self.active.discard(i)
            return _Ext(EXT_DICT, _encode(flat))
        if t is tuple or t is set or t is frozenset:
            i = self.enter(v, depth)
            r = _Ext(EXT_TUPLE if t is tuple else EXT_SET if t is set else EXT_FROZENSET,
                     _encode(self.seq(v, depth + 1)))
            self.active.discard(i)
            return r
        if t is _datetime:
            return _Ext(EXT_DATETIME, _datetime_text(v).encode())
        if t is _date:
            return _Ext(EXT_DATE, v.isoformat().encode())
        if t is _time:
            return _Ext(EXT_TIME, v.isoformat().encode())
        if t is _timedelta:
            return _Ext(EXT_TIMEDELTA, _encode([v.days, v.seconds, v.microseconds]))
        if t is _Decimal:
            return _Ext(EXT_DECIMAL, str(v).encode())
        if t is _UUID:
            return _Ext(EXT_UUID, v.bytes)
        if t is _Pattern:
            return _Ext(EXT_PATTERN, _encode([v.pattern, v.flags]))
        raise CodecError(f"cannot store or send a value of type {t.__module__}.{t.__qualname__}"
                         if t.__module__ != "builtins" else
                         f"cannot store or send a value of type {t.__qualname__}")


# A datetime is its ISO 8601 text (with the UTC offset if aware), then, for a zone of the tz
# database, "[Zone/Name]" (as RFC 9557 writes it), then "|1" if its fold is 1: it comes back
# in its zone, so that arithmetic across a DST change and the comparison of an ambiguous or
# skipped time (PEP 495) stay as they were. A reader without that zone, or whose tz database
# gives the time another offset, keeps the written offset: the instant never moves.

cdef str _datetime_text(object v):
    cdef str text = v.isoformat()
    tz = v.tzinfo
    if type(tz) is _ZoneInfo and tz.key is not None:
        text += f"[{tz.key}]"
    if v.fold:
        text += "|1"
    return text


cdef object _datetime_from(str text):
    cdef int fold = 0
    cdef Py_ssize_t i
    key = None
    if text.endswith("|1"):
        fold = 1
        text = text[:len(text) - 2]
    if text.endswith("]"):
        i = text.rfind("[")
        if i < 0:
            raise ValueError(f"a malformed datetime: {text!r}")
        key = text[i + 1:len(text) - 1]
        text = text[:i]
    v = _datetime.fromisoformat(text)
    if fold:
        v = v.replace(fold=1)
    if key is not None and v.tzinfo is not None:
        try:
            zoned = v.replace(tzinfo=_ZoneInfo(key))
        except (ValueError, OSError, _ZoneInfoNotFound):
            return v
        if zoned.utcoffset() == v.utcoffset():
            return zoned
    return v


cdef object _ext_hook(int code, object data):
    if code == EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_TUPLE:
        return tuple(_decode(data))
    if code == EXT_SET:
        return set(_decode(data))
    if code == EXT_FROZENSET:
        return frozenset(_decode(data))
    if code == EXT_DICT:
        flat = _decode(data)
        # Checked before indexing: this module indexes without bounds checks.
        if type(flat) is not list or len(<list>flat) % 2:
            raise CodecError("a dict extension value must be a flat list of pairs")
        return {flat[j]: flat[j + 1] for j in range(0, len(<list>flat), 2)}
    if code == EXT_DATETIME:
        return _datetime_from(bytes(data).decode())
    if code == EXT_DATE:
        return _date.fromisoformat(bytes(data).decode())
    if code == EXT_TIME:
        return _time.fromisoformat(bytes(data).decode())
    if code == EXT_TIMEDELTA:
        d, s, us = _decode(data)
        return _timedelta(d, s, us)
    if code == EXT_DECIMAL:
        return _Decimal(bytes(data).decode())
    if code == EXT_UUID:
        return _UUID(bytes=bytes(data))
    if code == EXT_PATTERN:
        p, flags = _decode(data)
        return re.compile(p, flags)
    raise CodecError(f"unknown codec extension type {code}")


def _ext_hook_py(code, data):
    try:
        return _ext_hook(code, data)
    except CodecError:
        raise
    except Exception as e:            # bytes no encoder wrote: a clear error, never another
        raise CodecError(f"bad value of codec extension type {code}: {e}") from None


cdef object _decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook_py)
cdef object _decode = _decoder.decode


cdef inline bint utf8_encodable(str s):
    """False for a str with a lone surrogate, which no UTF-8 file or frame can hold (one of
    one-byte characters has none)."""
    if PyUnicode_IS_ASCII(s) or PyUnicode_KIND(s) == PyUnicode_1BYTE_KIND:
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


cdef inline bint utf8_longer(str s, Py_ssize_t limit) except -1:
    """Whether S (utf8_encodable) takes more than LIMIT bytes in UTF-8; encoded only when
    its length in characters leaves it in doubt (a character is at most 4 bytes)."""
    return len(s) > limit // 4 and len(s.encode()) > limit


cdef object _surrogate_error(object e):
    """The CodecError for E, the UnicodeEncodeError of a str with a lone surrogate."""
    return CodecError(f"a str holds a lone surrogate ({e.object[e.start:e.end]!r}), which "
                      f"UTF-8 can not encode")


cdef inline int check_str(str s) except -1:
    """CodecError if S holds a lone surrogate (see utf8_encodable)."""
    if utf8_encodable(s):
        return 0
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _surrogate_error(e) from None
    return 0


cdef inline object _encodable(object v):
    """V as msgspec is given it: V itself if plain, else its walk (CodecError there)."""
    return v if _plain(v, 0) else _Walk().walk(v, 0)


cpdef bytes encode_value(object v):
    """Encodes V, or raises CodecError if a part of it is not a type the codec keeps."""
    cdef type t = type(v)
    try:
        if t is str or t is float or t is bool or v is None or t is bytes or (
                t is int and _fits_64(v)):
            return _encode(v)
        return _encode(_encodable(v))
    except UnicodeEncodeError as e:
        raise _surrogate_error(e) from None


cdef int append_value(bytearray buf, object v) except -1:
    """Appends what encode_value(V) returns to BUF (no bytes object of its own), or raises
    as encode_value does; BUF may then hold part of it."""
    try:
        _encode_into(_encodable(v), buf, -1)
    except UnicodeEncodeError as e:
        raise _surrogate_error(e) from None
    return 0


cpdef object decode_value(object data):
    """The value encode_value encoded (a fresh copy each time)."""
    try:
        return _decode(data)
    except CodecError:
        raise
    except (msgspec.DecodeError, TypeError, ValueError, RecursionError) as e:
        raise CodecError(f"cannot decode a stored value: {e}") from None


cdef inline bint _is_scalar(object v):
    cdef type t = type(v)
    return t is str or t is int or t is float or t is bool or v is None or t is bytes


cdef bint _plain(object v, int depth):
    """True if msgspec alone round-trips V exactly: scalars (64-bit ints), lists and dicts
    with str keys, not too deep (which also keeps cycles out: they go to the walk)."""
    cdef type t = type(v)
    if t is str or t is float or t is bool or v is None or t is bytes:
        return True
    if t is int:
        return _fits_64(v)
    if depth > 16:
        return False
    if t is dict:
        for k, x in (<dict>v).items():
            if type(k) is not str or not _plain(x, depth + 1):
                return False
        return True
    if t is list:
        for x in <list>v:
            if not _plain(x, depth + 1):
                return False
        return True
    return False


cdef object _NOT_PLAIN = object()


cdef object _plain_copy(object v, int depth):
    """A copy of V if it is plain (see _plain), else _NOT_PLAIN: scalars are immutable, so only
    the containers need copying, which is cheaper than an encode and a decode."""
    cdef type t = type(v)
    cdef dict d
    cdef list l
    if t is str:
        check_str(<str>v)
        return v
    if t is float or t is bool or v is None or t is bytes:
        return v
    if t is int:
        return v if _fits_64(v) else _NOT_PLAIN
    if depth > 16:
        return _NOT_PLAIN
    if t is dict:
        d = {}
        for k, x in (<dict>v).items():
            if type(k) is not str:
                return _NOT_PLAIN
            check_str(<str>k)
            x = _plain_copy(x, depth + 1)
            if x is _NOT_PLAIN:
                return _NOT_PLAIN
            d[k] = x
        return d
    if t is list:
        l = []
        for x in <list>v:
            x = _plain_copy(x, depth + 1)
            if x is _NOT_PLAIN:
                return _NOT_PLAIN
            l.append(x)
        return l
    return _NOT_PLAIN


cpdef object copy_value(object v):
    """A deep copy through the codec: what the other side of a call or a later read sees.
    Immutable scalars, and tuples of them, are shared instead of copied. A str the codec can
    not encode (a lone surrogate) is a CodecError here as it is in a frame to another worker.
    """
    if _is_scalar(v):
        if type(v) is str:
            check_str(<str>v)
        return v
    if type(v) is tuple:
        for x in <tuple>v:
            if not _is_scalar(x):
                break
            if type(x) is str:
                check_str(<str>x)
        else:
            return v
    r = _plain_copy(v, 0)
    if r is not _NOT_PLAIN:
        return r
    return _decode(encode_value(v))
