# HTTP as functions see it (Headers, Request, Response, SPEC §6) and the HTTP/1.1 front of
# `fastactor serve` (HttpConnection). Included by _core.pyx.
#
# The front answers the requests of one connection in order (keep-alive and pipelining).
# Plain requests (most of them) are read here in one pass over the bytes (_plain), the rest
# by httptools; when a request is whole the function's fetch is driven eagerly, inside
# the connection's data_received, the way the dispatcher drives turns: a fetch that never
# really suspends is answered with no task and no trip through the event loop, and only a
# fetch that does suspend (it awaits a durable reply, a sleep, a peer) gets an asyncio Task for
# the rest. Every refusal is a proper status with a short JSON body.

cdef object _urlsplit = urllib.parse.urlsplit
cdef object _parse_qsl = urllib.parse.parse_qsl
cdef object _json_encode = msgspec.json.Encoder().encode
cdef object _json_decode = msgspec.json.Decoder().decode
cdef object _Mapping = collections.abc.Mapping
cdef object _http_log = logging.getLogger("fastactor.http")

cdef dict _REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    412: "Precondition Failed", 413: "Content Too Large", 415: "Unsupported Media Type",
    417: "Expectation Failed",
    422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}
# A request line whose method is a token llhttp does not know (RFC 9110 9.1: 501).
cdef object _UNKNOWN_METHOD = re.compile(
    rb"(?:^|\n)([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) [\x21-\x7e]+ HTTP/1\.[01]\r?\n")
# A request line of an HTTP version this server does not speak (RFC 9110 15.6.6: 505).
cdef object _OTHER_VERSION = re.compile(rb" HTTP/(?:[2-9]\.[0-9]|1\.[2-9])\r?\n")
cdef double _LINGER = 2.0           # seconds a refused connection drains before it closes
# Seconds a fetch that was cancelled may go on before its request is answered without it
# (HttpConnection._left_behind): after its budget ran out (or its budget again, if less),
# and at the shutdown deadline.
cdef double _FETCH_GRACE = 5.0
cdef double _GIVE_UP_GRACE = 1.0
cdef dict _STATUS_LINES = {}         # status -> b"HTTP/1.1 200 OK\r\n", filled on first use
cdef dict _METHODS = {}              # method bytes from the parser -> str

cdef double _DURATION_BOUNDS[14]      # seconds; FrontStats.durations counts past the last too
_DURATION_BOUNDS[:] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 10.0, 30.0]


cdef inline double _mono() noexcept:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <double>t.tv_sec + <double>t.tv_nsec * 1e-9


@cython.final
cdef class FrontStats:
    """One function's front counters in this process, for a worker's /metrics: the final
    responses sent, by status class, and how long each request that ran fetch took, from
    fetch's start to its response handed to the socket (a pipelined request's wait behind
    the ones before it is not counted)."""

    cdef uint64_t responses[6]       # [2] 2xx ... [5] 5xx
    cdef uint64_t durations[15]      # per bound of _DURATION_BOUNDS, then past the last
    cdef double duration_sum

    def snapshot(self):
        """{"responses": {"2xx": n, ...}, "duration": [[upper bound, count in that bucket
        alone], ..., ["inf", count]], "duration_sum": seconds}."""
        return {
            "responses": {f"{c}xx": self.responses[c] for c in range(2, 6)},
            "duration": [[repr(_DURATION_BOUNDS[i]), self.durations[i]] for i in range(14)]
                        + [["inf", self.durations[14]]],
            "duration_sum": self.duration_sum,
        }

    cdef inline void response(self, int status) noexcept:
        if 200 <= status < 600:
            self.responses[status // 100] += 1

    cdef inline void took(self, double seconds) noexcept:
        cdef int b = 0
        while b < 14 and seconds > _DURATION_BOUNDS[b]:
            b += 1
        self.durations[b] += 1
        self.duration_sum += seconds


@cython.final
cdef class Headers:
    """Case-insensitive HTTP headers; a repeated header's values are joined with ", "
    (``getall`` gives them one by one). ``set``, ``append`` and ``delete`` (or ``h[name] =
    value`` and ``del h[name]``) change them, as on a Fetch API Headers object."""

    cdef list _items                 # [(name, value)] as given
    cdef dict _index                 # lower-case name -> [values], built on first lookup
    cdef bint frozen                 # shared by many responses (Response.json's): no changes

    def __init__(self, items=None):
        if items is None:
            pairs = ()
        elif isinstance(items, Headers):
            pairs = (<Headers>items)._items
        elif isinstance(items, _Mapping):
            pairs = list(items.items())
        else:
            pairs = list(items)
        self._items = [_header_field(k, v) for k, v in pairs]

    cdef dict index(self):
        cdef dict ix = self._index
        if ix is None:
            ix = {}
            for k, v in self._items:
                lk = (<str>k).lower()
                vs = ix.get(lk)
                if vs is None:
                    ix[lk] = [v]
                else:
                    (<list>vs).append(v)
            self._index = ix
        return ix

    def __getitem__(self, str key):
        return ", ".join(self.index()[key.lower()])

    def get(self, key, default=None):
        if type(key) is not str:
            return default
        vs = self.index().get((<str>key).lower())
        return default if vs is None else ", ".join(vs)

    def __contains__(self, key):
        return type(key) is str and (<str>key).lower() in self.index()

    def __iter__(self):
        return iter(self.index())

    def __len__(self):
        return len(self.index())

    def keys(self):
        return collections.abc.KeysView(self)

    def items(self):
        return collections.abc.ItemsView(self)

    def values(self):
        return collections.abc.ValuesView(self)

    def __eq__(self, other):
        if not isinstance(other, _Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def getall(self, str key):
        return list(self.index().get(key.lower(), ()))

    def raw(self):
        """The headers as given: a list of (name, value)."""
        return list(self._items)

    cdef void _changing(self) except *:
        if self.frozen:
            raise TypeError("these headers are shared and can not be changed")
        self._index = None

    def set(self, name, value):
        """NAME's value becomes VALUE, in place of every value it had."""
        field = _header_field(name, value)
        self._changing()
        lk = (<str>field[0]).lower()
        self._items = [f for f in self._items if (<str>f[0]).lower() != lk]
        self._items.append(field)

    def append(self, name, value):
        """Adds a value of NAME after those it has."""
        field = _header_field(name, value)
        self._changing()
        self._items.append(field)

    def delete(self, str name):
        """Removes every value of NAME (none: nothing happens)."""
        self._changing()
        lk = name.lower()
        self._items = [f for f in self._items if (<str>f[0]).lower() != lk]

    def __setitem__(self, name, value):
        self.set(name, value)

    def __delitem__(self, str name):
        if name.lower() not in self.index():
            raise KeyError(name)
        self.delete(name)

    def __repr__(self):
        return f"Headers({self._items!r})"


collections.abc.Mapping.register(Headers)


cdef bytes _BOM = b"\xef\xbb\xbf"
cdef object _BAD_VALUE = re.compile(r"[\r\n\x00]|[^\x00-\xff]").search
cdef unsigned char _TCHAR[256]        # RFC 9110 5.6.2: the bytes of a token (header names)
for _c in range(256):
    _TCHAR[_c] = chr(_c) in (
        "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
del _c


cdef bint _is_token(str s):
    """S is an HTTP token (a header name): one or more _TCHAR characters."""
    cdef Py_UCS4 ch
    if not s:
        return False
    for ch in s:
        if ch > 255 or not _TCHAR[ch]:
            return False
    return True


cdef tuple _header_field(object name, object value):
    """A header given by user code, as (name, value) strs: the name an HTTP token, the value
    without surrounding blanks; ValueError for what no HTTP message can carry (a line break
    or NUL, a character above U+00FF), as the Fetch API's Headers refuses it."""
    cdef str k = str(name)
    cdef str v = str(value).strip(" \t")
    if not _is_token(k):
        raise ValueError(f"{k!r} is not an HTTP header name (a token: letters, digits and "
                         "!#$%&'*+-.^_`|~)")
    if _BAD_VALUE(v) is not None:
        raise ValueError(f"the value of header {k!r} holds a line break, a NUL or a "
                         f"character above U+00FF: {v!r:.80}")
    return (k, v)


cdef inline Headers _headers_of(list items):
    """Headers over ITEMS, a list of (str, str) this module made (not copied)."""
    cdef Headers h = Headers.__new__(Headers)
    h._items = items
    return h


cdef Headers _JSON_HEADERS = _headers_of([("content-type", "application/json")])
cdef Headers _TEXT_HEADERS = _headers_of([("content-type", "text/plain; charset=utf-8")])
cdef Headers _NO_HEADERS = _headers_of([])
_JSON_HEADERS.frozen = _TEXT_HEADERS.frozen = _NO_HEADERS.frozen = True


cdef Headers _as_headers(object headers):
    if headers is None:
        return _NO_HEADERS
    if type(headers) is Headers:
        return <Headers>headers
    return Headers(headers)


cdef Headers _with_type(object headers, Headers default):
    """HEADERS plus the content type of DEFAULT unless HEADERS names one."""
    if headers is None:
        return default
    cdef Headers h = Headers(headers)
    if "content-type" in h.index():
        return h
    return _headers_of(h._items + default._items)


cdef bytes _body_bytes(object body, str what):
    """A body given as str (UTF-8), None (empty) or any bytes-like object, as bytes."""
    if isinstance(body, str):
        return (<str>body).encode("utf-8")
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"{what} body must be bytes, str or None, not {type(body).__name__}")


cdef str _text_of(bytes b):
    """A body as the Fetch API's text() reads it (see Request.text)."""
    if b.startswith(_BOM):
        b = b[3:]
    return b.decode("utf-8", "replace")


cdef object _json_of(bytes b):
    """A body as the Fetch API's json() reads it (see Request.json)."""
    if b.startswith(_BOM):
        b = b[3:]
    return _json_decode(b)


cdef class Request:
    """An HTTP request: ``method``, ``url``, ``path``, ``query`` (last value wins),
    ``headers`` (case-insensitive) and the body through ``await body()/text()/json()``. From
    the server, ``url`` is "http://", the request's Host and its target."""

    cdef readonly str method
    cdef readonly str url
    cdef readonly str path
    cdef str _qs
    cdef dict _query
    cdef object _headers             # Headers; until first asked for, the parser's list or
                                     # the header lines _plain read (bytes)
    cdef bytes _body
    cdef Py_ssize_t _queued          # what it counts in its connection's queued_bytes

    def __init__(self, first=None, url=None, headers=None, body=b"", *, method=None):
        """``Request(url, method="GET", headers=None, body=b"")`` as the Fetch API makes one
        (a Durable Object's ``stub.fetch(url, init)``), or ``Request(method, url, ...)``."""
        if first is not None and url is not None:    # Request(method, url)
            if method is not None:
                raise TypeError("Request: the method is given twice (first argument and "
                                "method=)")
            m = first
        else:                                        # Request(url, method=...)
            if url is None:
                url = first
                if type(url) is str and "/" not in url:
                    raise ValueError(f"Request: {url!r:.100} is not a URL (Request(url, "
                                     "method=...) or Request(method, url))")
            m = "GET" if method is None else method
        if url is None:
            raise TypeError("Request needs a URL: Request(url, method=...) or "
                            "Request(method, url)")
        if type(url) is not str:
            raise TypeError(f"Request: the URL must be a str, not {type(url).__name__}")
        if type(m) is not str:
            raise TypeError(f"Request: the method must be a str, not {type(m).__name__}")
        if not _is_token(m):
            raise ValueError(f"Request: {m!r:.100} is not an HTTP method (a token; "
                             "Request(method, url) or Request(url, method=...))")
        if type(body) is not bytes:
            body = _body_bytes(body, "Request")
        self.method = (<str>m).upper()
        self.url = url
        parts = _urlsplit(url)
        self.path = parts.path or "/"
        self._qs = parts.query
        self._headers = headers if type(headers) is Headers else Headers(headers)
        self._body = body

    @property
    def headers(self):
        if type(self._headers) is list:
            self._headers = _headers_of(<list>self._headers)
        elif type(self._headers) is bytes:
            self._headers = _headers_of(_header_lines(<bytes>self._headers))
        return self._headers

    @property
    def query(self):
        """The query string as a dict (last value wins), parsed on first use."""
        if self._query is None:
            self._query = dict(_parse_qsl(self._qs, keep_blank_values=True))
        return self._query

    async def body(self):
        return self._body

    async def text(self):
        """The body as UTF-8, as the Fetch API's text() reads it: a leading byte order mark
        dropped, each invalid sequence U+FFFD (so a client's bytes never make it raise)."""
        return _text_of(self._body)

    async def json(self):
        """The body parsed as JSON (a leading byte order mark dropped); a ValueError if it
        is not JSON."""
        return _json_of(self._body)

    def __repr__(self):
        return f"<Request {self.method} {self.url}>"


cdef Request _fetch_input(object request, object method, object headers, object body):
    """What ``stub.fetch(request)`` or ``stub.fetch(url, method=, headers=, body=)`` (a
    Durable Object's ``stub.fetch(url, init)``) sends."""
    if isinstance(request, Request):
        if method is not None or headers is not None or body is not None:
            raise TypeError("fetch(request) takes no method, headers or body: give them to "
                            "the Request, or call fetch(url, method=..., ...)")
        return <Request>request
    if type(request) is str:
        return Request(request, None, headers, b"" if body is None else body, method=method)
    raise TypeError(f"fetch takes a Request or a URL (str), not {type(request).__name__}")


cdef list _header_lines(bytes lines):
    """[(name, value)] of LINES, header lines HttpConnection._plain checked: each a token,
    ":", optional spaces and tabs, the value, CRLF."""
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(lines)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lines), i = 0, k0, k1, v0
    cdef list out = []
    while i < n:
        k0 = i
        while b[i] != c':':
            i += 1
        k1 = i
        i += 1
        while b[i] == c' ' or b[i] == c'\t':
            i += 1
        v0 = i
        while b[i] != c'\r':
            i += 1
        out.append((PyUnicode_DecodeLatin1(<const char*>b + k0, k1 - k0, NULL),
                    PyUnicode_DecodeLatin1(<const char*>b + v0, i - v0, NULL)))
        i += 2
    return out


cdef Request _wire_request(str method, str base, str target, object headers, bytes body):
    """A request as the parser saw it. TARGET is the decoded request target; the origin form
    ("/path?query") is split here, the absolute form (an http or https URL) goes through
    Request's own parsing, and any other form is a ValueError."""
    cdef Request r
    cdef Py_ssize_t q, h
    if not target.startswith("/"):
        if not target[:8].lower().startswith(("http://", "https://")):
            raise ValueError(f"{target[:100]!r} is neither a path nor an http(s) URL")
        q = target.find("://") + 3
        h = q
        while h < len(target) and target[h] not in "/?#":
            h += 1
        if "@" in target[q:h]:
            raise ValueError("a request target carries no user name or password")
        # Scheme and host are case-insensitive: lower case, as the Fetch API writes a URL.
        r = Request(method, target[:h].lower() + target[h:], None, body)
        r._headers = headers
        return r
    r = Request.__new__(Request)
    r.method = method
    r.url = base + target
    h = target.find("#")
    if h >= 0:
        target = target[:h]
    q = target.find("?")
    if q >= 0:
        r.path = target[:q]
        r._qs = target[q + 1:]
    else:
        r.path = target
        r._qs = ""
    r._headers = headers
    r._body = body
    return r


cdef inline void _check_status(object status) except *:
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"bad HTTP status {status!r}")


def _response_of_json(obj, status=200, headers=None):
    """Response.json(obj, status=200, headers=None): OBJ as a JSON body."""
    _check_status(status)
    cdef Response r = Response.__new__(Response)
    r.body = _json_encode(obj)
    r.status = status
    r._headers = _with_type(headers, _JSON_HEADERS)
    return r


def _response_of_text(str s, status=200, headers=None):
    """Response.text(s, status=200, headers=None): S as a UTF-8 text body."""
    _check_status(status)
    cdef Response r = Response.__new__(Response)
    r.body = s.encode("utf-8")
    r.status = status
    r._headers = _with_type(headers, _TEXT_HEADERS)
    return r


async def _response_json(Response r):
    """await response.json(): the body parsed as JSON; a ValueError if it is not JSON."""
    return _json_of(r.body)


async def _response_text(Response r):
    """await response.text(): the body as UTF-8 (invalid sequences U+FFFD)."""
    return _text_of(r.body)


@cython.final
cdef class _ClassOrInstance:
    """A descriptor: MAKE when looked up on the class, READ bound to the instance when
    looked up on one (Response.json / response.json)."""
    cdef object make
    cdef object read

    def __cinit__(self, make, read):
        self.make = make
        self.read = read

    def __get__(self, obj, objtype):
        if obj is None:
            return self.make
        return types.MethodType(self.read, obj)


cdef class Response:
    """An HTTP response. ``Response.json(obj)`` and ``Response.text(s)`` make one with that
    body and its content type; ``await response.json()`` and ``await response.text()`` read
    one (what ``stub.fetch`` answered), as in the Fetch API."""

    cdef public bytes body
    cdef public int status
    cdef Headers _headers            # a frozen one is shared: .headers gives a copy of it

    def __init__(self, body=b"", status=200, headers=None):
        _check_status(status)
        self.status = status
        if type(body) is str:            # text, as the Fetch API's Response types it
            self.body = (<str>body).encode("utf-8")
            self._headers = _with_type(headers, _TEXT_HEADERS)
            return
        if type(body) is not bytes:
            body = _body_bytes(body, "Response")
        self.body = body
        self._headers = _as_headers(headers)

    @property
    def headers(self):
        """The response's Headers, which may be changed in place."""
        if self._headers.frozen:
            self._headers = _headers_of(list(self._headers._items))
        return self._headers

    @headers.setter
    def headers(self, value):
        self._headers = _as_headers(value)

    # As in the Fetch API, json and text make a response when asked of the class
    # (Response.json(obj)) and read one when asked of a response (await r.json(), say of
    # what stub.fetch answered).
    json = _ClassOrInstance(_response_of_json, _response_json)
    text = _ClassOrInstance(_response_of_text, _response_text)

    @property
    def ok(self):
        """The status is 2xx."""
        return 200 <= self.status <= 299

    @staticmethod
    def redirect(str url, status=302):
        """Response.redirect(url, status=302): an empty answer sending the client to URL,
        with status 301, 302, 303, 307 or 308, as in the Fetch API."""
        if type(status) is not int or status not in (301, 302, 303, 307, 308):
            raise ValueError(f"a redirect's status is 301, 302, 303, 307 or 308, not {status!r}")
        cdef Response r = Response.__new__(Response)
        r.body = b""
        r.status = status
        r._headers = Headers([("location", url)])
        return r

    def __repr__(self):
        return f"<Response {self.status} {len(self.body)} bytes>"



# What OPTIONS * answers: the methods every function may be asked (each decides per path).
cdef str _ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


cdef Response _error_response(int status, str message):
    return Response.json({"error": _REASONS.get(status, "Error"), "message": message}, status)


cdef Response _fetch_error(str error, str message):
    """500 for a fetch that failed: SPEC §6's {"error": <class name>, "message": ...}."""
    return Response(_json_encode({"error": error, "message": message}), 500, _JSON_HEADERS)


cdef Response _busy_response(str message):
    """503 for a request refused for what the worker holds now: to be sent again shortly."""
    cdef Response r = _error_response(503, message)
    r.headers["retry-after"] = "1"
    return r


cdef bytes _status_line(int status):
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n".encode("latin-1")
        if 100 <= status <= 599:
            _STATUS_LINES[status] = line
    return line


cdef tuple _DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
cdef tuple _MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                      "Nov", "Dec")
cdef object _gmtime = time.gmtime
cdef time_t _date_at = -1
cdef bytes _date_line = b""


cdef bytes _date_header():
    """The Date header line (RFC 9110 6.6.1: an origin server with a clock sends it), made
    once a second."""
    global _date_at, _date_line
    cdef time_t now = c_time(NULL)
    if now != _date_at:
        t = _gmtime(now)
        _date_line = (
            f"date: {_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT\r\n").encode("ascii")
        _date_at = now
    return _date_line


cdef bytes _JSON_TYPE = b"content-type: application/json\r\n"
cdef bytes _TEXT_TYPE = b"content-type: text/plain; charset=utf-8\r\n"
cdef bytes _LENGTH = b"content-length: "
cdef bytes _KEEP = b"\r\nconnection: keep-alive\r\n\r\n"     # after the length's digits
cdef bytes _CLOSE = b"\r\nconnection: close\r\n\r\n"
cdef bytes _BARE_KEEP = _KEEP[2:]                             # no length before it
cdef bytes _BARE_CLOSE = _CLOSE[2:]
cdef bytes _CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


cdef bytes _wire_response(Response r, bint keep_alive, bint head=False):
    """R as HTTP/1.1 bytes. The body's length and the connection header are ours; the
    response's own content-length, connection and transfer-encoding are left out, and so is
    any header with a line break in it. A Date is added unless the response has one. HEAD
    (the answer to a HEAD request) has the head of the answer to a GET, content-length
    included, and no body. 204 and 304 have neither body nor content-length (RFC 9110 8.6)."""
    cdef Headers h = r._headers
    cdef bytes body = r.body
    cdef list out
    cdef bint bare = r.status == 204 or r.status == 304
    if bare:
        body = b""
    elif h is _JSON_HEADERS or h is _TEXT_HEADERS:
        return _plain_response(_status_line(r.status), _JSON_TYPE if h is _JSON_HEADERS
                               else _TEXT_TYPE, body, keep_alive, head)
    if h is _JSON_HEADERS:
        out = [_status_line(r.status), _date_header(), _JSON_TYPE]
    elif h is _TEXT_HEADERS:
        out = [_status_line(r.status), _date_header(), _TEXT_TYPE]
    else:
        out = [_status_line(r.status), None]
        has_type = has_date = False
        for k, v in h._items:
            lk = (<str>k).lower()
            if lk == "content-length" or lk == "connection" or lk == "transfer-encoding":
                continue
            if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
                continue
            if lk == "content-type":
                has_type = True
            elif lk == "date":
                has_date = True
            out.append(f"{k}: {v}\r\n".encode("latin-1"))
        out[1] = b"" if has_date else _date_header()
        if not has_type and body:
            out.append(b"content-type: application/octet-stream\r\n")
    if bare:
        out.append(_BARE_KEEP if keep_alive else _BARE_CLOSE)
        return b"".join(out)
    out.append(_LENGTH)
    out.append(str(len(body)).encode("ascii"))
    out.append(_KEEP if keep_alive else _CLOSE)
    if not head:
        out.append(body)
    return b"".join(out)


cdef bytes _plain_response(bytes status, bytes ctype, bytes body, bint keep_alive, bint head):
    """What _wire_response makes of a response whose only header is its content type, built
    in one buffer."""
    cdef bytes date = _date_header()
    cdef bytes tail = _KEEP if keep_alive else _CLOSE
    cdef char digits[24]
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t nd = 0, k = size
    while True:                        # the length's digits, last first
        digits[nd] = <char>(c'0' + k % 10)
        nd += 1
        k //= 10
        if k == 0:
            break
    cdef Py_ssize_t nbody = 0 if head else size
    cdef Py_ssize_t parts[5]
    parts[0] = PyBytes_GET_SIZE(status)
    parts[1] = PyBytes_GET_SIZE(date)
    parts[2] = PyBytes_GET_SIZE(ctype)
    parts[3] = PyBytes_GET_SIZE(_LENGTH)
    parts[4] = PyBytes_GET_SIZE(tail)
    cdef bytes out = PyBytes_FromStringAndSize(
        NULL, parts[0] + parts[1] + parts[2] + parts[3] + nd + parts[4] + nbody)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(status), parts[0])
    p += parts[0]
    memcpy(p, PyBytes_AS_STRING(date), parts[1])
    p += parts[1]
    memcpy(p, PyBytes_AS_STRING(ctype), parts[2])
    p += parts[2]
    memcpy(p, PyBytes_AS_STRING(_LENGTH), parts[3])
    p += parts[3]
    while nd > 0:
        nd -= 1
        p[0] = digits[nd]
        p += 1
    memcpy(p, PyBytes_AS_STRING(tail), parts[4])
    p += parts[4]
    if nbody:
        memcpy(p, PyBytes_AS_STRING(body), nbody)
    return out


def encode_response(Response r, bint keep_alive, bint head=False):
    """R as the bytes the front sends (for tests and tools); HEAD for the answer to a HEAD
    request."""
    return _wire_response(r, keep_alive, head)


cdef object _CancelledError = asyncio.CancelledError


@cython.final
@cython.freelist(64)
cdef class _FetchTask(_TaskBase):
    """Carries a fetch that suspended, in place of an asyncio Task: it waits on the futures
    the coroutine yields and resumes it from their done callbacks, with no task object, no
    first step through the loop and no done callback of its own. While a step runs it is
    asyncio's current task, with the cancel/cancelling/uncancel a Task has, so
    ``asyncio.timeout`` and friends work inside fetch."""

    cdef HttpConnection conn
    cdef object waiting              # the future the coroutine waits on
    cdef int cancel_requests
    cdef bint must_cancel            # a cancel came while no future was waited on
    cdef bint left                   # let go by conn (see _left_behind): its end answers nothing

    cdef void step(self, object value, object exc):
        cdef int returned = 0
        cdef bint ended = False
        failure = None
        prev = _swap_task(self.loop, self)
        PyContext_Enter(self.context)
        try:
            if self.must_cancel:
                self.must_cancel = False
                if exc is None or not isinstance(exc, _CancelledError):
                    exc = _CancelledError()
            try:
                if exc is None:
                    y = fa_coro_send(self.coro, value, &returned)
                else:
                    y = self.coro.throw(exc)
            except StopIteration as s:     # from throw()
                returned = 1
                y = s.value
            except BaseException as e:
                ended = True
                failure = e
                y = None
            if returned:
                ended = True
            elif not ended:
                self.wait_on(y)
        finally:
            PyContext_Exit(self.context)
            _restore_task(self.loop, self, prev)
        if ended:                           # outside: the next request gets its own task
            self._finish(y, failure)
            if not self.left:
                self.conn._fetched(y, failure)

    cdef void wait_on(self, object y):
        # Wake-ups run in the connection's context (step enters the fetch's own), so what
        # runs after the fetch, the next request's start included, never sees its variables.
        if y is None:                  # a bare yield (asyncio.sleep(0)): next iteration
            self.loop.call_soon(self._resume, None, context=self.conn.context)
            return
        if getattr(y, "_asyncio_future_blocking", None) is not True:
            self.loop.call_soon(self._throw, RuntimeError(
                f"fetch awaited {y!r}, which is not an asyncio future"), context=self.conn.context)
            return
        y._asyncio_future_blocking = False
        self.waiting = y
        y.add_done_callback(self._wakeup, context=self.conn.context)
        if self.must_cancel and y.cancel():
            self.must_cancel = False

    def _wakeup(self, fut):
        self.waiting = None
        try:
            value = fut.result()
        except BaseException as e:
            self.step(None, e)
        else:
            self.step(value, None)

    def _resume(self, value):
        self.step(value, None)

    def _throw(self, exc):
        self.step(None, exc)

    # -- what asyncio asks of the current task -------------------------------------------------

    def cancel(self, msg=None):
        if self.finished:
            return False
        self.cancel_requests += 1
        if self.waiting is not None and self.waiting.cancel(msg):
            return True
        self.must_cancel = True
        return True

    def cancelling(self):
        return self.cancel_requests

    def uncancel(self):
        if self.cancel_requests > 0:
            self.cancel_requests -= 1
        return self.cancel_requests

    # Read by libraries that drive cancellation themselves (anyio's cancel scopes), as they
    # read them on an asyncio Task.
    @property
    def _must_cancel(self):
        return self.must_cancel

    @property
    def _fut_waiter(self):
        return self.waiting

    def get_name(self):
        return f"fetch of {self.conn.base_url}"

    def __repr__(self):
        return f"<fetch task {'done' if self.finished else 'pending'}>"


# The bodies and heads a connection's pipelined requests may hold while they wait for the
# ones ahead of them: past it the front stops reading from the connection until they are
# answered.
# Without it one client pipelining 100 bodies of 8 MiB behind a slow fetch made its worker
# hold 850 MB (each body is still refused past --max-body).
cdef Py_ssize_t QUEUED_BYTES = 1 << 20

# The request bodies this process's connections hold at once (being read, queued, running),
# against Limits.body_memory: a body of more than SMALL_BODY that would take it past the
# limit is answered 503 (with its Content-Length, before a byte of it is read). Without it,
# 100 connections each sending all but the last byte of a 10 MiB body made a worker hold
# 1 GB, and a few thousand would have it killed for memory. Smaller bodies are refused only
# past a quarter more than the limit: requests of the usual size go on while large uploads
# are told to come back, and many connections each trickling a small body stop there too
# (with 10,000 of them, 64 KiB each, a worker went 800 MB past the limit). A whole request
# the front finds in one read is taken as it is: it is already in memory.
cdef Py_ssize_t _BODIES = 0
cdef Py_ssize_t SMALL_BODY = 64 << 10
# Request heads still arriving count in _BODIES too, with what may be held of them (httptools
# keeps the part of a header line it has read): past SMALL_HEAD, with the bound passed, such
# a head is answered 503 as a large body is, and a smaller one past the quarter more. Without
# it, 9,000 connections each sending 120 KB of a head that never ended held 1,101 MB of a
# worker until the head timeout.
cdef Py_ssize_t SMALL_HEAD = 16 << 10


def bodies_held():
    """The request body bytes this process's connections hold now, with heads still arriving
    (for /metrics, tests)."""
    return _BODIES


cdef void _reading(object transport, bint on) except *:
    """Flow control of a protocol whose peer stopped reading (pause_writing): stop reading
    from it until it reads again (resume_writing)."""
    if transport is not None and not transport.is_closing():
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()


cdef bint _PLAIN = True               # read plain requests without httptools (_plain)


def _plain_parsing(on=None):
    """Whether the front reads plain requests itself, or hands every byte to httptools;
    ON sets it. For tests that compare the two."""
    global _PLAIN
    if on is not None:
        _PLAIN = bool(on)
    return _PLAIN


cdef inline bint _lower_is(const unsigned char* p, Py_ssize_t n, const char* lower):
    """P[:N] equals LOWER (lower-case letters and '-') but for the case of its letters."""
    cdef Py_ssize_t k
    for k in range(n):
        if (p[k] | 0x20) != <unsigned char>lower[k]:
            return False
    return True


cdef unsigned char _AUTHORITY[256]     # the bytes of a Host taken into Request.url
for _c in range(256):
    _AUTHORITY[_c] = chr(_c) in (
        "-._~!$&'()*+,;=:[]%0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
del _c


cdef str _plain_method(const unsigned char* p, Py_ssize_t n):
    if n == 3:
        if memcmp(p, b"GET", 3) == 0:
            return "GET"
        if memcmp(p, b"PUT", 3) == 0:
            return "PUT"
    elif n == 4:
        if memcmp(p, b"POST", 4) == 0:
            return "POST"
        if memcmp(p, b"HEAD", 4) == 0:
            return "HEAD"
    elif n == 5:
        if memcmp(p, b"PATCH", 5) == 0:
            return "PATCH"
    elif n == 6:
        if memcmp(p, b"DELETE", 6) == 0:
            return "DELETE"
    elif n == 7:
        if memcmp(p, b"OPTIONS", 7) == 0:
            return "OPTIONS"
    return None


cdef class HttpConnection:
    """One HTTP/1.1 connection: an asyncio protocol. FETCH is ``fetch(request, env)`` of the
    function served here; LIMITS a fastactor.server.http.Limits; CONNS the set of open
    connections (for the connection cap and draining); COUNTERS["requests"] counts; STATS
    the function's FrontStats (a fresh one if not given)."""

    cdef object fetch
    cdef object env
    cdef object loop
    cdef readonly object transport
    cdef object parser
    cdef readonly str base_url
    cdef bytes host_seen             # the Host of the last request that named a usable one
    cdef str host_base               # "http://" and it: the base of that request's URL
    cdef object context              # the server's context: each fetch runs in a copy
    cdef set conns
    cdef readonly dict counters
    cdef Py_ssize_t max_body
    cdef Py_ssize_t max_headers
    cdef Py_ssize_t max_pipeline
    cdef Py_ssize_t max_conns
    cdef Py_ssize_t body_memory      # the bound on _BODIES past which big bodies get 503
    cdef double fetch_timeout
    cdef double idle_timeout
    cdef double head_timeout
    cdef double request_timeout
    cdef double tick                 # the period of the connection's timer
    # the request being parsed
    cdef bint reading                # a request has begun and is not whole yet
    cdef bint head_read              # and its head is whole
    cdef Py_ssize_t head_fed         # bytes fed to the parser in chunks wholly inside its head
    cdef bint head_began             # its head began in the chunk being fed
    cdef double read_since           # loop time the timer first saw it reading; -1: not yet
    cdef bint mid                    # httptools holds part of a request
    cdef bint ended                  # a request without keep-alive was read: no more come
    cdef list url
    cdef list headers
    cdef Py_ssize_t header_bytes
    cdef list body
    cdef Py_ssize_t body_bytes
    cdef Py_ssize_t declared         # its Content-Length; -1: none (chunked, or no body)
    cdef Py_ssize_t partial          # what its body holds of _BODIES (reserved or read)
    cdef Py_ssize_t head_held        # what its head holds of _BODIES while it arrives
    cdef object refused
    cdef int expect                  # 1: "Expect: 100-continue" seen; 2: and the head is whole
    cdef int hosts                   # Host header lines
    cdef bint upgrade                # an Upgrade header
    cdef object held                 # (method, keep-alive, target, headers) of a request
                                     # asking to upgrade, its body still to come
    cdef Py_ssize_t held_left        # bytes of that body still to come
    # answering
    cdef readonly object queue       # (Request or None, Response or None, keep-alive)
    cdef readonly bint busy          # a fetch is running
    cdef public bint closing
    cdef bint keep                   # keep-alive of the request being answered
    cdef Request current
    cdef readonly _FetchTask task    # carries a fetch that suspended
    cdef double started              # loop time the running fetch started
    cdef double t0                   # _mono() at its start, for stats; -1: none
    cdef readonly FrontStats stats
    cdef bint in_start               # the fetch's first step is running
    cdef object budget               # the fetch_timeout timer, armed while fetches run
    cdef bint timed_out
    cdef bint giving_up              # give_up() cancelled the running fetch
    cdef readonly object idle_handle
    cdef Py_ssize_t queued_bytes     # the bodies and heads of the requests waiting in queue
    cdef Py_ssize_t charged          # its share of _BODIES: partial, queued, running
    cdef bint queue_full             # past QUEUED_BYTES or body_memory: reading stops until
                                     # the next request starts (at half of QUEUED_BYTES)
    cdef bint write_full             # the client stopped reading answers (pause_writing)
    cdef bint read_paused            # the transport's reading is paused (either of those)
    cdef bint lingering              # a refusal closes: read and drop until LINGER passes
    cdef object linger_handle
    cdef double last_active

    def __init__(self, fetch, env, limits, str base_url, set conns, dict counters,
                 FrontStats stats=None):
        self.stats = FrontStats() if stats is None else stats
        self.fetch = fetch
        self.env = env
        self.base_url = base_url
        self.conns = conns
        self.counters = counters
        self.t0 = -1
        self.max_body = limits.body
        self.max_headers = limits.headers
        self.max_pipeline = limits.max_pipeline
        self.max_conns = limits.connections
        self.body_memory = limits.body_memory
        self.fetch_timeout = limits.fetch_timeout
        self.idle_timeout = limits.idle_timeout
        self.head_timeout = limits.head_timeout
        self.request_timeout = limits.request_timeout
        self.tick = min(self.idle_timeout, self.head_timeout, self.request_timeout) / 2
        self.parser = httptools.HttpRequestParser(self)
        self.queue = collections.deque()
        self._reset()

    cdef void _reset(self):
        self.url = []
        self.headers = []
        self.header_bytes = 0
        self.body = []
        self.body_bytes = 0
        self.declared = -1
        self.refused = None
        self.expect = 0
        self.hosts = 0
        self.upgrade = False
        self.reading = False
        self.head_read = False
        self.read_since = -1.0

    cdef inline void _charge(self, Py_ssize_t n) noexcept:
        """Adds N bytes of bodies (N < 0: takes away, never more than it holds) to what
        this connection holds of _BODIES."""
        global _BODIES
        if n < -self.charged:
            n = -self.charged
        self.charged += n
        _BODIES += n

    cdef inline void _drop_partial(self) noexcept:
        """The request being read is dropped (refused, or it became a request, which
        _queue charges): what its body and head held is given back."""
        self._charge(-self.partial - self.head_held)
        self.partial = 0
        self.head_held = 0

    cdef inline void _drop_all(self) noexcept:
        """The connection is done with every request it holds: all it held is given back."""
        self.body = []
        self.partial = 0
        self.head_held = 0
        self._charge(-self.charged)

    cdef inline bint _no_room(self, Py_ssize_t more) noexcept:
        """Taking MORE bytes of bodies would go past body_memory."""
        return _BODIES + more > self.body_memory

    cdef inline bint _past_ceiling(self) noexcept:
        """The worker holds more than a quarter past body_memory: the room left for small
        bodies and heads (never refused below it) is spent too."""
        return _BODIES > self.body_memory + (self.body_memory >> 2)

    def pending(self):
        """True while a request is running or waiting to."""
        return self.busy or len(self.queue) > 0

    def shut(self):
        """Closes the connection now (a drained server's idle connections)."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def give_up(self):
        """The server's shutdown deadline has passed: a running fetch is cancelled and
        answered 503 with Retry-After, and so is each request pipelined behind it (none of
        them ran: a client may send them again), the last answer closing the connection. A
        connection with no fetch running closes now."""
        self.closing = True
        if self.task is not None and self.transport is not None:
            self.giving_up = True      # (_next answers the requests queued behind it)
            self.task.cancel()
            self.loop.call_later(_GIVE_UP_GRACE, self._left_behind, self.task)
        else:
            self.queue.clear()
            self.shut()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.context = PyContext_CopyCurrent()
        if len(self.conns) >= self.max_conns:
            # Over the cap: a short answer and goodbye, before any request is read.
            self.closing = True
            transport.write(_wire_response(_busy_response("too many connections"), False))
            transport.close()
            return
        self.conns.add(self)
        self.last_active = self.loop.time()
        self.idle_handle = self.loop.call_later(self.tick, self._idle)

    def connection_lost(self, exc):
        self.conns.discard(self)
        self.closing = True
        self.queue.clear()
        self._drop_all()               # a fetch still running keeps its body a while yet
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.linger_handle is not None:
            self.linger_handle.cancel()
            self.linger_handle = None
        if self.budget is not None and self.task is None:
            self.budget.cancel()       # else it keeps a closed connection for up to 30 s
            self.budget = None
        # The parser, the transport and the timers each refer back to this connection: the
        # cycles are cut here so that a closed connection is freed now, not at the next
        # full collection. (Connections a load kept open for its whole run end up in the
        # collector's oldest generation, which an idle worker never collects: 64 of them
        # kept 16 to 22 MiB of a worker's memory after the load, by the arenas they pinned.)
        self.parser = None
        self.transport = None

    def eof_received(self):
        # Half-closed by the client: answer what came in, then close (the default).
        return None

    def pause_writing(self):
        # The client is not reading its answers: stop reading its requests until it does,
        # so a pipelining client that never reads cannot grow the write buffer for ever.
        self.write_full = True
        self._flow()

    def resume_writing(self):
        self.write_full = False
        self._flow()

    cdef void _flow(self) except *:
        """Reading from the client stops while it does not read its answers or its queued
        requests hold more than QUEUED_BYTES of bodies, and goes on once neither holds."""
        cdef bint pause = self.write_full or self.queue_full
        if pause == self.read_paused:
            return
        if self.transport is None or self.transport.is_closing():
            return
        self.read_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data):
        cdef Py_ssize_t n, partial_before
        if self.ended and not self.closing:
            # Bytes after a request that closes: dropped, and the answer is followed by a FIN
            # and a linger, not a close that would reset it (see _send).
            self.lingering = True
            return
        if self.closing:
            return
        self.last_active = -1.0  # activity: _idle looks again one period later
        if _PLAIN and not self.mid and self.held is None and PyBytes_CheckExact(data):
            n = self._plain(<bytes>data)
            if n == PyBytes_GET_SIZE(data) or self.closing or self.ended:
                self.reading = False
                self.read_since = -1.0
                if not self.busy:
                    self._next()
                return
            if n:
                data = data[n:]
        # Until the parser completes a request these bytes belong to, one is being read (a
        # chunk that ends with a request leaves it False; no callback per request for this).
        self.reading = True
        while data and not self.closing:   # more than one turn only past an upgrade request
            if self.held is not None:
                data = self._held_body(data)
                if not data:
                    break
            fresh = not self.mid
            count = self.counters["requests"]
            self.head_began = False
            body_before = self.body_bytes
            partial_before = self.partial
            try:
                self.parser.feed_data(data)
                if self.mid:
                    if not self.head_began:
                        if not self.head_read or self.body_bytes == body_before:
                            self._head_grew(len(data))  # the head, or a trailer (framing)
                        else:
                            self.head_fed = 0
                    if not self.head_read and not self.closing:
                        self._hold_head(len(data))
                    elif (self.partial > partial_before and self.refused is None
                            and not self.closing and not self.busy and not self.queue
                            and self._past_ceiling()):
                        # A body still arriving that holds more as it comes (a small one, or
                        # chunked: a large one of known length holds all of it from its
                        # head on), once the ceiling is passed. (Behind requests of its
                        # connection, reading stops instead: see _queue.)
                        self._refuse(_busy_response("the server holds too many request "
                                                    "bodies now; send this one again shortly"))
                break
            except httptools.HttpParserUpgrade as e:
                data = self._upgrade(data, e.args[0])
            except httptools.HttpParserInvalidMethodError as e:
                # A method token httptools does not know is a 501 naming it, if the refused
                # request begins DATA; past requests httptools read itself, where it began
                # is not known, and it is a 400.
                m = None
                if fresh and count == self.counters["requests"]:
                    m = _UNKNOWN_METHOD.match(data)
                if m is None:
                    self._refuse(_error_response(400, f"malformed request: {e}"))
                else:
                    self._refuse(_error_response(
                        501, f"method {m.group(1).decode('ascii')} is not supported"))
                break
            except httptools.HttpParserError as e:
                if self.refused is None and _OTHER_VERSION.search(data) is not None:
                    # HTTP/2 with prior knowledge (its PRI preface), or a version past 1.1
                    self._refuse(_error_response(
                        505, "HTTP version not supported: this server speaks HTTP/1.1"))
                elif self.refused is None:
                    self._refuse(_error_response(400, f"malformed request: {e}"))
                else:
                    self._refuse(self.refused)
                break
        if self.closing:
            # Nothing more is parsed: a refused request's parser lets go of the part of a
            # head it holds now, not when the client closes or the linger ends. 9,000
            # connections sending 120 KB heads, half of them refused, held 1,149 MB of a
            # worker with the refused ones' parsers kept, 654 MB without. The headers read
            # so far go with it.
            self.parser = None
            self._reset()
        if not self.busy:
            self._next()

    def _idle(self):
        """Runs every `tick` seconds: one timer per connection, not one per request, and no
        clock read per request (activity and a request's start are stamped here, late by up
        to one tick). Closes a connection with nothing pending after idle_timeout without a
        byte. Answers 408 and closes when a request's head is not whole head_timeout after
        its first byte, the whole request request_timeout after it, or it stalls for
        idle_timeout: a client that trickles bytes holds no connection for ever."""
        cdef double now = self.loop.time()
        self.idle_handle = None
        if self.transport is None or self.closing:
            return
        if self.last_active < 0:
            self.last_active = now
        elif now - self.last_active >= self.idle_timeout and not self.busy and not self.queue:
            if self.reading:
                self._late("the request stalled")
            else:
                self.closing = True
                self.transport.close()
            return
        if self.reading and self.queue_full:
            self.read_since = -1.0     # the front stopped reading, not the client: its clock
                                       # starts again once the front reads on
        elif self.reading:
            if self.read_since < 0:
                self.read_since = now
            elif not self.head_read and now - self.read_since >= self.head_timeout:
                self._late("the request head did not arrive in time")
                return
            elif now - self.read_since >= self.request_timeout:
                self._late("the request did not arrive in time")
                return
        self.idle_handle = self.loop.call_later(self.tick, self._idle)

    cdef object _upgrade(self, data, Py_ssize_t offset):
        """The parser stopped after the head of a request asking to switch protocols (an
        Upgrade header, or CONNECT). Nothing is switched (RFC 9110 7.8 lets a server ignore
        Upgrade): the request is answered as any other, its body (by Content-Length) read
        here, as the parser does not, and the bytes after it parsed as the next requests.
        After CONNECT they are a tunnel's: its answer is the connection's last. What of DATA
        is left to parse."""
        if self.parser.get_method() == b"CONNECT":
            self.closing = True
            return None
        self.parser = httptools.HttpRequestParser(self)
        self.mid = False
        return data[offset:]

    cdef object _held_body(self, data):
        """Takes what DATA holds of the held request's body; queues the request once the
        body is whole. What is left of DATA."""
        cdef Py_ssize_t n = min(len(data), self.held_left)
        if n:
            self.body.append(bytes(data[:n]))
            self.held_left -= n
        if self.held_left == 0:
            method, keep, raw, headers = self.held
            self.held = None
            self.headers = headers
            self._complete(method, keep, raw)
        return data[n:]

    cdef void _late(self, str why) except *:
        """Answers 408 to the request being read (after those already queued), then closes."""
        self._reset()
        self.held = None
        self.held_left = 0
        self._refuse(_error_response(408, why))
        if not self.busy:
            self._next()

    cdef void _refuse(self, Response response):
        """Answers after the requests already queued, then closes: the stream is not
        trustworthy past a refused request, and the body of the one being read is dropped."""
        self.closing = True
        self.lingering = True
        self.body = []
        self._drop_partial()
        self.queue.append((None, response, False))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self):
        self.mid = True
        self.head_fed = 0
        self.head_began = True
        # A request that begins after another one ended in the same chunk is being read too
        # (_complete reset the flag): its head and request timers run from here.
        self.reading = True

    def on_url(self, bytes url):
        self.url.append(url)
        self._count(len(url))

    def on_header(self, bytes name, bytes value):
        self._count(len(name) + len(value) + 4)
        if len(name) == 4 and (name == b"Host" or name.lower() == b"host"):
            self.hosts += 1
        elif len(name) == 7 and name.lower() == b"upgrade":
            self.upgrade = True
        if (len(name) == 14 and name.lower() == b"content-length" and value.isdigit()
                and int(value) > self.max_body):
            # Refused before the body is read.
            self.refused = _error_response(
                413, f"request body is larger than {self.max_body} bytes")
            raise httptools.HttpParserError("body too large")
        if len(name) == 14 and value.isdigit() and name.lower() == b"content-length":
            self.declared = int(value)     # (httptools refuses a second one)
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            # llhttp reads the body as chunked when chunked is the last coding and refuses a
            # request whose last coding is another (RFC 9112 6.3); a coding before it (gzip,
            # chunked) would reach fetch still applied, for none but chunked is undone here.
            for coding in value.split(b","):
                coding = coding.strip().lower()
                if coding and coding != b"chunked":
                    self.refused = _error_response(
                        501, f"transfer coding {coding.decode('latin-1')[:40]!r} is not "
                        "supported (only chunked)")
                    raise httptools.HttpParserError("unsupported transfer coding")
        if len(name) == 6 and name.lower() == b"expect":
            if value.strip().lower() != b"100-continue":
                self.refused = _error_response(
                    417, f"unsupported expectation {value.decode('latin-1')!r}")
                raise httptools.HttpParserError("unsupported expectation")
            self.expect = 1
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    cdef void _head_grew(self, Py_ssize_t n) except *:
        """N more bytes of a head that began in an earlier chunk and is still not whole.
        _count sees a header only once its line ends, and httptools keeps the part of a line
        it has read: a header line that never ended held all that came (200 MiB sent, 378 MB
        in the worker) until the head timeout. These bytes are all the head's: past twice
        max_headers of them it is too large however it ends, even counted as _count counts
        (without the request line's method and version, line breaks and blanks). The same
        goes for chunks of a chunked body that bring none of its bytes: a trailer line that
        never ended held all that came as well (100 MiB sent: 152 MB)."""
        self.head_fed += n
        if self.head_fed > 2 * self.max_headers and self.refused is None:
            self._refuse(_error_response(
                431, f"request headers are larger than {self.max_headers} bytes"))

    cdef void _hold_head(self, Py_ssize_t n) except *:
        """A head is still open after a chunk of N bytes: it may hold all of them (it began
        in this chunk) or all of them more (it began earlier). That bound counts in _BODIES
        until the request is read or dropped; past SMALL_HEAD with the bound passed, or at
        any size past the ceiling (the connection's only request), the request is answered
        503 now rather than held to the head timeout."""
        cdef Py_ssize_t held = n if self.head_began else self.head_held + n
        self._charge(held - self.head_held)
        self.head_held = held
        if self.refused is None and (
                (held > SMALL_HEAD and self._no_room(0))
                or (not self.busy and not self.queue and self._past_ceiling())):
            self._refuse(_busy_response(
                "the server holds too many large requests now; send this one again shortly"))

    cdef void _count(self, Py_ssize_t n) except *:
        self.header_bytes += n
        if self.header_bytes > self.max_headers and self.refused is None:
            self.refused = _error_response(
                431, f"request headers are larger than {self.max_headers} bytes")
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self):
        self.head_read = True
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            # llhttp reads "HTTP/2.0" and "HTTP/0.9" request lines; neither is HTTP/1.x.
            self.refused = _error_response(
                505, "HTTP version not supported: this server speaks HTTP/1.1")
            raise httptools.HttpParserError("bad version")
        if self.hosts != 1 and (self.hosts or version == "1.1"):
            # RFC 9112 3.2: an HTTP/1.1 request has one Host header, no request has two.
            self.refused = _error_response(400, "an HTTP/1.1 request needs a Host header"
                                           if not self.hosts else "more than one Host header")
            raise httptools.HttpParserError("bad host")
        if (self.upgrade and self.parser.should_upgrade()
                and self.parser.get_method() != b"CONNECT"):
            self._hold()               # (a refused request holds nothing)
        if self.declared > SMALL_BODY:
            # A body of known length holds its bytes in _BODIES from here, read or not.
            if self._no_room(self.declared):
                self._busy_refusal()
            self._charge(self.declared)
            self.partial = self.declared
        if self.expect and version == "1.1":
            self.expect = 2
            self._continue()

    cdef void _busy_refusal(self) except *:
        self.refused = _busy_response(
            "the server holds too many request bodies now; send this one again shortly")
        raise httptools.HttpParserError("no memory for the body")

    cdef void _continue(self) except *:
        """Sends the "100 Continue" a client that sent "Expect: 100-continue" waits for before
        its body, once every earlier request of the connection is answered (an interim
        response goes after them, RFC 9110 15.2.1). Until then the client waits; curl sends
        its body after 1 s anyway."""
        if self.busy or self.queue or self.closing:
            return
        self.expect = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_CONTINUE)

    cdef void _hold(self) except *:
        """A request asking to upgrade: the parser will not read its body (it stops after the
        head), so the body's length is noted for _held_body."""
        cdef Py_ssize_t n = 0
        for name, value in self.headers:
            lname = (<str>name).lower()
            if lname == "transfer-encoding":
                self.refused = _error_response(
                    400, "a request asking to upgrade can not have a chunked body here")
                raise httptools.HttpParserError("chunked upgrade")
            if lname == "content-length":
                n = int(value)         # the parser checked it: digits, one header
        self.held_left = n

    def on_body(self, bytes body):
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            self.refused = _error_response(
                413, f"request body is larger than {self.max_body} bytes")
            raise httptools.HttpParserError("body too large")
        if self.body_bytes > self.partial:
            # Past what was reserved for it: a chunked body, or a small one.
            self._charge(self.body_bytes - self.partial)
            self.partial = self.body_bytes
            if self.body_bytes > SMALL_BODY and self._no_room(0):
                self._busy_refusal()
        self.body.append(body)

    def on_message_complete(self):
        self.mid = False
        mb = self.parser.get_method()
        method = _METHODS.get(mb)
        if method is None:
            method = (<bytes>mb).decode("latin-1")
            if len(_METHODS) < 64:
                _METHODS[mb] = method
        keep = self.parser.should_keep_alive()
        raw = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        if self.held_left:
            # An upgrade request's head: its body comes past the parser (_upgrade).
            self.held = (method, keep, raw, self.headers)
            self._reset()
            self.reading = self.head_read = True
            return
        self._complete(method, keep, raw)

    cdef void _complete(self, str method, bint keep, bytes raw) except *:
        """Queues the request whose head and body were read."""
        cdef Request req = None
        cdef Response resp = None
        body = (b"" if not self.body else self.body[0] if len(self.body) == 1
                else b"".join(self.body))
        cdef bytes host
        base = self.base_url
        for k, v in self.headers:
            if len(<str>k) == 4 and (<str>k).lower() == "host":
                host = (<str>v).encode("latin-1")
                base = self._base(<const unsigned char*>PyBytes_AS_STRING(host),
                                  PyBytes_GET_SIZE(host))
                break
        if method == "CONNECT":
            resp = _error_response(501, "CONNECT is not supported: a function answers "
                                        "requests, it opens no tunnels")
        elif raw == b"*":                  # the asterisk form: the server as a whole
            if method == "OPTIONS":
                resp = Response(b"", 204, {"allow": _ALLOW})
            else:
                resp = _error_response(400, "the request target * is for OPTIONS only")
        else:
            try:
                req = _wire_request(method, base, (<bytes>raw).decode("utf-8"),
                                    self.headers, body)
            except (UnicodeDecodeError, ValueError) as e:
                resp = _error_response(400, f"bad request target: {e}")
        cdef Py_ssize_t head = self.header_bytes
        self._reset()
        self._drop_partial()
        self._queue(req, resp, keep, head)

    cdef str _base(self, const unsigned char* host, Py_ssize_t n):
        """The base of a request's URL: "http://" and its Host, if that is a plain authority
        (host, port, IPv6 literal: no "/", "?", "#", "@", blank or non-ASCII byte), else the
        listener's address. A connection's requests name the same Host: the last is kept."""
        cdef Py_ssize_t k
        if (self.host_seen is not None and PyBytes_GET_SIZE(self.host_seen) == n
                and memcmp(PyBytes_AS_STRING(self.host_seen), host, n) == 0):
            return self.host_base
        if n == 0 or n > 255:
            return self.base_url
        for k in range(n):
            if not _AUTHORITY[host[k]]:
                return self.base_url
        self.host_seen = PyBytes_FromStringAndSize(<const char*>host, n)
        self.host_base = "http://" + PyUnicode_DecodeASCII(<const char*>host, n, NULL)
        return self.host_base

    cdef void _queue(self, Request req, Response resp, bint keep, Py_ssize_t head=0) except *:
        """Queues a request read whole (REQ, or RESP, the front's own answer to it); HEAD is
        the size of its head, which counts with its body in the connection's queued_bytes
        (without it, 128 pipelined requests of 64 KiB heads each were 8 MiB a connection)."""
        if self.closing:
            return                     # past a refusal: nothing more is answered
        self.counters["requests"] += 1
        if len(self.queue) >= self.max_pipeline:
            self._refuse(_error_response(429, "too many pipelined requests"))
            return
        self.queue.append((req, resp, keep))
        if req is not None:
            self._charge(PyBytes_GET_SIZE(req._body))
            req._queued = PyBytes_GET_SIZE(req._body) + head
            self.queued_bytes += req._queued
            if ((self.queued_bytes > QUEUED_BYTES or _BODIES > self.body_memory)
                    and not self.queue_full):
                # Past its own share, or the worker's bound on bodies is passed: read no
                # further ahead until the next of its requests starts (small bodies are
                # never refused for memory, so this is what bounds a pipeline of them).
                self.queue_full = True
                self._flow()

    cdef Py_ssize_t _plain(self, bytes data) except -1:
        """Reads the whole, plain requests at the start of DATA, which begins a request,
        and queues them, without httptools and its callback per part; returns the bytes they
        took. It stops at the first request that is not whole, or not plain: a version other
        than HTTP/1.1, a method other than GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS, a
        target not in origin form, a byte outside visible ASCII, space and tab, a line not
        ending in CRLF, a Host count other than one, a Content-Length other than one run of
        digits, Transfer-Encoding, Expect, Upgrade, a Connection other than close or
        keep-alive, or a limit reached. httptools parses the rest, with its refusals: this
        path accepts only requests httptools reads the same way, and refuses none."""
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, i, j, t0, t1, h0, k0, k1, v0, v1, size, length, hv0 = 0, hv1 = 0
        cdef int hosts
        cdef bint keep, has_length
        cdef str method
        while pos < n and not self.closing:
            i = pos
            while i < n and i - pos < 8 and c'A' <= b[i] <= c'Z':
                i += 1
            if i >= n or b[i] != c' ':
                return pos
            method = _plain_method(b + pos, i - pos)
            if method is None:
                return pos
            i += 1
            t0 = i
            if i >= n or b[i] != c'/':
                return pos
            while i < n and 0x21 <= b[i] <= 0x7e:
                i += 1
            t1 = i
            if n - i < 11 or memcmp(b + i, b" HTTP/1.1\r\n", 11) != 0:
                return pos
            i += 11
            size = t1 - t0
            hosts = 0
            length = 0
            has_length = False
            keep = True
            h0 = i
            while True:
                if n - i < 2:
                    return pos
                if b[i] == c'\r':
                    if b[i + 1] != c'\n':
                        return pos
                    break
                k0 = i
                while i < n and _TCHAR[b[i]]:
                    i += 1
                if i == k0 or i >= n or b[i] != c':':
                    return pos
                k1 = i
                i += 1
                while i < n and (b[i] == c' ' or b[i] == c'\t'):
                    i += 1
                v0 = i
                while i < n and (0x20 <= b[i] <= 0x7e or b[i] == c'\t'):
                    i += 1
                v1 = i
                if n - i < 2 or b[i] != c'\r' or b[i + 1] != c'\n':
                    return pos
                i += 2
                size += k1 - k0 + v1 - v0 + 4
                if size > self.max_headers:
                    return pos
                if k1 - k0 == 4 and _lower_is(b + k0, 4, b"host"):
                    hosts += 1
                    hv0 = v0
                    hv1 = v1
                elif k1 - k0 == 14 and _lower_is(b + k0, 14, b"content-length"):
                    if has_length or v1 == v0 or v1 - v0 > 15:
                        return pos
                    for j in range(v0, v1):
                        if not c'0' <= b[j] <= c'9':
                            return pos
                        length = length * 10 + (b[j] - c'0')
                    has_length = True
                elif k1 - k0 == 10 and _lower_is(b + k0, 10, b"connection"):
                    if v1 - v0 == 5 and _lower_is(b + v0, 5, b"close"):
                        keep = False
                    elif not (v1 - v0 == 10 and _lower_is(b + v0, 10, b"keep-alive")):
                        return pos
                elif ((k1 - k0 == 17 and _lower_is(b + k0, 17, b"transfer-encoding"))
                      or (k1 - k0 == 6 and _lower_is(b + k0, 6, b"expect"))
                      or (k1 - k0 == 7 and _lower_is(b + k0, 7, b"upgrade"))
                      or (k1 - k0 == 16 and _lower_is(b + k0, 16, b"proxy-connection"))):
                    return pos
            if hosts != 1 or length > self.max_body or n - i - 2 < length:
                return pos
            # The header lines, copied (not the chunk): decoded if the function asks for them.
            lines = PyBytes_FromStringAndSize(<const char*>b + h0, i - h0)
            i += 2
            body = PyBytes_FromStringAndSize(<const char*>b + i, length) if length else b""
            i += length
            self._queue(_wire_request(
                method, self._base(b + hv0, hv1 - hv0),
                PyUnicode_DecodeASCII(<const char*>b + t0, t1 - t0, NULL), lines, body),
                None, keep, size)
            pos = i
            if not keep:
                self.ended = True      # what follows a request that closes is no request
                if pos < n:
                    self.lingering = True
                return n
        return pos

    # -- answering -----------------------------------------------------------------------------

    cdef void _next(self):
        """Answers queued requests in order until one suspends or the queue is empty."""
        cdef Request req
        while self.queue and not self.busy:
            req_, resp, keep = self.queue.popleft()
            if req_ is not None:
                self.queued_bytes -= (<Request>req_)._queued
                if self.queue_full and self.queued_bytes <= QUEUED_BYTES // 2:
                    self.queue_full = False
                    self._flow()
            if req_ is None:
                if keep and (<Response>resp).status < 400:   # the front's own (OPTIONS *)
                    self._send(resp, True)
                    continue
                self._send(resp, False)
                return
            req = <Request>req_
            self.busy = True
            self.keep = keep
            self.current = req
            if self.giving_up:
                # Queued behind a fetch that give_up answered: it never runs. Answered the
                # same way, in order; the last answer closes the connection.
                self.t0 = -1
                self._answer(_busy_response("the server is shutting down"))
                continue
            self._start(req)
        if self.expect == 2:
            self._continue()

    cdef void _start(self, Request req):
        cdef _FetchTask task
        self.t0 = _mono()
        try:
            r = self.fetch(req, self.env)
        except BaseException as e:
            self._done(None, e)
            return
        if not PyCoro_CheckExact(r) and not (hasattr(r, "send") and hasattr(r, "throw")):
            if not hasattr(r, "__await__"):
                self._done(r, None)
                return
            r = _await_it(r)
        task = _FetchTask.__new__(_FetchTask)
        task.conn = self
        task.coro = r
        task.loop = self.loop
        task.context = PyContext_Copy(self.context)
        self.task = task
        self.timed_out = False
        self.started = self.loop.time()
        self.in_start = True
        try:
            task.step(None, None)
        finally:
            self.in_start = False
        if not task.finished and self.budget is None:
            # One timer per connection, re-armed for what is left of the running fetch's
            # budget, not one per request.
            self.budget = self.loop.call_later(self.fetch_timeout, self._budget_check)

    def _budget_check(self):
        self.budget = None
        if self.task is None:
            return
        left = self.started + self.fetch_timeout - self.loop.time()
        if left > 0.001:
            self.budget = self.loop.call_later(left, self._budget_check)
            return
        self.timed_out = True
        self.task.cancel()
        self.loop.call_later(min(_FETCH_GRACE, self.fetch_timeout), self._left_behind,
                             self.task)

    def _left_behind(self, _FetchTask task):
        """TASK was cancelled (its budget ran out, or give_up) a while ago and goes on: its
        code catches the cancellation. Its request is answered now (504, or 503 at the
        shutdown), as it would have been had it ended, and what the task still does answers
        nothing; the connection goes on with the requests behind it."""
        if self.task is not task or task.finished:
            return
        _http_log.warning("%s %s: fetch went on after it was cancelled (does its code catch "
                          "CancelledError?): answered without it, and left behind",
                          self.current.method, self.current.path)
        task.left = True
        self._fetched(None, _CancelledError())

    cdef void _fetched(self, object value, object exc):
        """The end of a fetch that went through a _FetchTask."""
        self.task = None
        if exc is not None and isinstance(exc, _CancelledError):
            if self.timed_out:
                _http_log.warning("%s %s: fetch ran past %g s", self.current.method,
                                  self.current.path, self.fetch_timeout)
                self._answer(_error_response(504, f"fetch ran past {self.fetch_timeout:g} s"))
            elif self.giving_up:
                self._answer(_busy_response("the server is shutting down"))
            else:
                self._answer(_error_response(503, "the request was cancelled"))
        else:
            self._done(value, exc)
        if not self.in_start:
            self._next()               # else _next, which started this fetch, goes on

    cdef void _done(self, object value, object exc):
        cdef Request req = self.current
        if exc is not None:
            _http_log.error("%s %s: fetch raised", req.method, req.path, exc_info=exc)
            self._answer(_fetch_error(type(exc).__name__, str(exc)))
        elif not isinstance(value, Response):
            # Answered as the TypeError a stub's fetch raises for the same mistake.
            _http_log.error("%s %s: fetch returned %r, not a Response", req.method, req.path,
                            value)
            self._answer(_fetch_error(
                "TypeError", f"fetch returned {type(value).__name__}, not a Response"))
        elif (<Response>value).status < 200:
            _http_log.error("%s %s: fetch returned status %d, an interim status", req.method,
                            req.path, (<Response>value).status)
            self._answer(_fetch_error("ValueError", "fetch returned an interim (1xx) status"))
        else:
            self._answer(<Response>value)

    cdef void _answer(self, Response resp):
        cdef bint head = self.current.method == "HEAD"
        self._charge(-PyBytes_GET_SIZE(self.current._body))
        if self.t0 >= 0:
            self.stats.took(_mono() - self.t0)
            self.t0 = -1
        self.busy = False
        self.current = None
        self._send(resp, self.keep, head)

    cdef void _send(self, Response resp, bint keep, bint head=False):
        cdef bint last = not keep or (self.closing and not self.queue)
        if self.transport is None or self.transport.is_closing():
            return
        cdef int status = resp.status
        try:
            data = _wire_response(resp, not last, head)
        except Exception as e:         # headers a user set that are not text, say
            _http_log.error("bad response: %s", e)
            status = 500
            data = _wire_response(_error_response(500, "fetch returned a bad response"),
                                  not last, head)
        self.transport.write(data)
        self.stats.response(status)
        if last:
            self.closing = True
            self.queue.clear()
            self._drop_all()
            if self.lingering and self.transport.can_write_eof():
                # The client may still be sending (the body refused, the requests after
                # it): closing now with its bytes unread would send a reset, which can
                # destroy the answer before the client reads it. Send a FIN after the
                # answer, drop what still comes in (data_received ignores it), and close
                # once the client does or _LINGER seconds pass.
                self.transport.write_eof()
                self.read_paused = self.queue_full = self.write_full = False
                _reading(self.transport, True)
                self.linger_handle = self.loop.call_later(_LINGER, self.transport.close)
            else:
                self.transport.close()
        else:
            self.last_active = -1.0
