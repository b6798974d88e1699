# ctx.storage: per-turn write sets over the committed state of an instance. Included by
# _core.pyx.
#
# Where a value lives, newest first:
#   1. the write sets of the running turn (a stack: one per open transaction);
#   2. the instance's cache (values committed or read before; dropped on eviction);
#   3. the shard's overlay layers: `dirty` (committed turns not yet in the snapshot) and
#      `frozen` (the generation a checkpoint is writing into the snapshot right now);
#   4. the snapshot store (SQLite), read lazily, one key or one range at a time.
# Values are kept encoded (bytes); every read decodes a fresh copy.

cdef str RESERVED_PREFIX = "__fastactor_"
cdef Py_ssize_t MAX_KEY_BYTES = 2048
cdef Py_ssize_t MAX_VALUE_BYTES = 2 * 1024 * 1024
cdef Py_ssize_t MAX_LIST_LIMIT = 1000
cdef Py_ssize_t MAX_BATCH_KEYS = 128      # get, put and delete of many keys at once
cdef object _NO_VALUE = object()          # put(entries) has no value argument
# The instance's alarm: a reserved key of its own storage, so setting, deleting and keeping
# it through delete_all are writes of the turn like any other (one record, one output gate).
cdef str ALARM_KEY = "__fastactor_alarm"
STORAGE_ALARM_KEY = ALARM_KEY                        # for readers of the files
cdef int64_t MAX_ALARM_MS = 253402300799999         # 9999-12-31T23:59:59.999Z
cdef object _EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
cdef object _ONE_MS = datetime.timedelta(milliseconds=1)
# "Known not to exist" in a write set, a cache or a layer. Stored values are always bytes, so
# None is free for it, and a commit's write set goes into the log record as it is.
cdef object _ABSENT = None


cdef int check_key(object key) except -1:
    if type(key) is not str:
        raise TypeError(f"storage keys are str, not {type(key).__name__}")
    if not key:
        raise ValueError("storage keys must not be empty")
    if (<str>key).startswith(RESERVED_PREFIX):
        raise ValueError(f"storage keys starting with {RESERVED_PREFIX!r} are reserved")
    if not utf8_encodable(<str>key):
        raise ValueError(f"storage key {key!r} is not valid Unicode (a lone surrogate)")
    if utf8_longer(<str>key, MAX_KEY_BYTES):
        raise StorageLimitError(f"storage key is longer than {MAX_KEY_BYTES} UTF-8 bytes")
    return 0


cdef bytes encode_stored(object value):
    cdef bytes data = encode_value(value)
    if len(data) > MAX_VALUE_BYTES:
        raise StorageLimitError(
            f"value is {len(data)} bytes encoded; the limit is {MAX_VALUE_BYTES} (2 MiB)")
    return data


cdef int64_t alarm_time(object when) except? -1:
    """WHEN (ms since the epoch as int or float, or an aware datetime) as int ms."""
    if type(when) is bool or not isinstance(when, (int, float, datetime.datetime)):
        raise TypeError("an alarm time is milliseconds since the epoch (int or float) or an "
                        f"aware datetime, not {type(when).__name__}")
    if isinstance(when, datetime.datetime):
        if when.utcoffset() is None:
            raise ValueError("an alarm time must be an aware datetime (this one has no "
                             "time zone)")
        ms = (when - _EPOCH) // _ONE_MS
    elif isinstance(when, float):
        if not math.isfinite(when):
            raise ValueError(f"an alarm time must be finite, not {when}")
        ms = math.ceil(when)
    else:
        ms = when
    if ms > MAX_ALARM_MS:
        raise ValueError(f"alarm time {when!r} is after the year 9999")
    if ms < -MAX_ALARM_MS:
        raise ValueError(f"alarm time {when!r} is before the year -9999")
    return ms


# The storage calls proper, shared by ctx.storage and a transaction's txn: T is the turn whose
# top write set takes the writes.

cdef object _get(_Turn t, object key, object default):
    if type(key) is not str and (type(key) is list or type(key) is tuple):
        return _get_many(t, key)
    check_key(key)
    v = t.read(key)
    return default if v is _ABSENT else decode_value(v)


cdef int _put(_Turn t, object key, object value) except -1:
    if value is _NO_VALUE:
        return _put_many(t, key)
    check_key(key)
    cdef bytes data = encode_stored(value)
    t.top.puts[key] = data
    return 0


cdef object _delete(_Turn t, object key):
    if type(key) is not str and (type(key) is list or type(key) is tuple):
        return _delete_many(t, key)
    check_key(key)
    existed = t.read(key) is not _ABSENT
    t.top.puts[key] = _ABSENT
    return existed


# Many keys at once, as Durable Objects has them: get(keys) -> dict of those that exist, in
# key order; put(entries); delete(keys) -> how many existed. At most 128 keys, all checked
# (and put's values all encoded) before anything is read or written.

cdef list _batch_keys(object keys, str what):
    cdef list ks = list(keys)
    if len(ks) > MAX_BATCH_KEYS:
        raise ValueError(f"{what} takes at most {MAX_BATCH_KEYS} keys at once, not {len(ks)}")
    for k in ks:
        check_key(k)
    return ks


cdef dict _get_many(_Turn t, object keys):
    cdef dict out = {}
    for k in sorted(set(_batch_keys(keys, "get"))):
        v = t.read(k)
        if v is not _ABSENT:
            out[k] = decode_value(v)
    return out


cdef int _put_many(_Turn t, object entries) except -1:
    if type(entries) is not dict:
        raise TypeError("put takes a key and a value, or a dict of entries "
                        f"(not {type(entries).__name__} alone)")
    cdef list ks = _batch_keys(entries, "put")
    cdef list data = [encode_stored(v) for v in (<dict>entries).values()]
    cdef dict puts = t.top.puts
    for i in range(len(ks)):
        puts[ks[i]] = data[i]
    return 0


cdef int _delete_many(_Turn t, object keys) except -1:
    cdef int existed = 0
    for k in set(_batch_keys(keys, "delete")):
        if t.read(k) is not _ABSENT:
            existed += 1
        t.top.puts[k] = _ABSENT
    return existed


cdef int _set_alarm(_Turn t, object when) except -1:
    t.top.puts[ALARM_KEY] = encode_value(alarm_time(when))
    t.alarm_touched = True
    return 0


cdef object _get_alarm(_Turn t):
    v = t.read(ALARM_KEY)
    return None if v is _ABSENT else decode_value(v)


cdef int _delete_alarm(_Turn t) except -1:
    t.top.puts[ALARM_KEY] = _ABSENT
    t.alarm_touched = True
    return 0


cdef int _delete_all(_Turn t) except -1:
    alarm = t.read(ALARM_KEY)              # delete_all leaves the alarm (SPEC 3)
    t.top.cleared = True
    t.top.puts = {}
    if alarm is not _ABSENT:
        t.top.puts[ALARM_KEY] = alarm
    return 0


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class _WriteSet:
    """Writes of one turn (or one transaction inside it): key -> bytes, or None (deleted)."""
    cdef dict puts
    cdef bint cleared

    def __cinit__(self):
        self.puts = {}
        self.cleared = False

    cdef void merge_from(self, _WriteSet other):
        if other.cleared:
            self.cleared = True
            self.puts = other.puts
        else:
            self.puts.update(other.puts)


@cython.final
cdef class _Layer:
    """Committed writes of one instance within one overlay generation."""
    cdef dict puts
    cdef bint cleared

    def __cinit__(self):
        self.puts = {}
        self.cleared = False

    cdef void apply(self, bint cleared, dict puts):
        if cleared:
            self.cleared = True
            self.puts = dict(puts)
        else:
            self.puts.update(puts)


# Snapshot values carry a checksum (SQLite's pages have none): the value's encoding, then
# the CRC-32C of "inst\0key\0" and that encoding, 4 bytes little-endian. A flipped bit in the
# file is then a clear error at the read, never a silently different value. Format 1 (round
# 1 to 6) stored the bare encoding; opening such a snapshot seals it in place.
cdef int SNAPSHOT_FORMAT = 2


cdef uint32_t _value_crc(str inst, str key, const unsigned char *data, Py_ssize_t n):
    cdef bytes a = inst.encode("utf-8", "surrogatepass")
    cdef bytes b = key.encode("utf-8", "surrogatepass")
    cdef uint32_t crc = cwal.fa_crc32c(0, PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a))
    crc = cwal.fa_crc32c(crc, b"\0", 1)
    crc = cwal.fa_crc32c(crc, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    crc = cwal.fa_crc32c(crc, b"\0", 1)
    return cwal.fa_crc32c(crc, data, <size_t>n)


cdef bytes _seal(str inst, str key, bytes value):
    cdef uint32_t crc = _value_crc(inst, key, <const unsigned char *>PyBytes_AS_STRING(value),
                                   PyBytes_GET_SIZE(value))
    cdef unsigned char tail[4]
    tail[0] = crc & 0xFF
    tail[1] = (crc >> 8) & 0xFF
    tail[2] = (crc >> 16) & 0xFF
    tail[3] = (crc >> 24) & 0xFF
    return value + PyBytes_FromStringAndSize(<char *>tail, 4)


cdef bytes _unseal(str path, str inst, str key, object blob):
    """The encoded value of a snapshot row, or LogCorruptionError naming the file and key."""
    cdef const unsigned char *p
    cdef Py_ssize_t n
    cdef uint32_t crc
    if type(blob) is not bytes or PyBytes_GET_SIZE(blob) < 5:
        crc = 1
    else:
        p = <const unsigned char *>PyBytes_AS_STRING(blob)
        n = PyBytes_GET_SIZE(blob) - 4
        crc = _value_crc(inst, key, p, n) ^ (<uint32_t>p[n] | (<uint32_t>p[n + 1] << 8) |
                                             (<uint32_t>p[n + 2] << 16) |
                                             (<uint32_t>p[n + 3] << 24))
    if crc != 0:
        raise _mismatch(path, inst, key)
    return blob[:PyBytes_GET_SIZE(blob) - 4]


cdef object _mismatch(str path, str inst, str key):
    type_name, _, name = inst.partition("\0")
    return LogCorruptionError(f"{path}: the stored value of key {key!r} of {type_name} "
                              f"{name!r} is damaged (checksum mismatch)")


def snapshot_error(str path, e):
    """What the sqlite3 error E, met reading or writing the snapshot at PATH, is to a
    caller, naming the file: LogCorruptionError for a damaged page or stored text that is not
    UTF-8 (which only damage makes), OSError for a full disk and anything else."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, UnicodeDecodeError) or code is None and "decode" in str(e):
        # Not SQLite's: a row's text, or SQLite's message quoting damaged text
        return LogCorruptionError(f"{path}: the snapshot is damaged ({e})")
    code = (code or 0) & 0xFF
    if code in (11, 26):                              # SQLITE_CORRUPT, SQLITE_NOTADB
        return LogCorruptionError(f"{path}: the snapshot is damaged ({e})")
    if code == 13:                                    # SQLITE_FULL
        return OSError(errno.ENOSPC, f"{path}: no space left on the device for the snapshot")
    return OSError(errno.EIO, f"{path}: the snapshot can not be read or written ({e})")


cdef object _applied_lsn(str path, dict meta):
    """The snapshot's applied LSN from its META rows (no row yet: 0), or LogCorruptionError
    naming PATH if that row does not hold one (a damaged page)."""
    if "applied_lsn" not in meta:
        return 0
    v = meta["applied_lsn"]
    if type(v) is not int or v < 0:
        raise LogCorruptionError(f"{path}: the snapshot is damaged (its applied LSN reads "
                                 f"{v!r})")
    return v


_META_NAMES = frozenset(("applied_lsn", "format"))


def snapshot_meta(str path, db):
    """(applied LSN, format or None for the first) from the meta rows of the snapshot open in
    DB, or LogCorruptionError naming PATH. A row by a name this version never writes is
    damage: the name "format" changed (in the row and its index alike, which integrity_check
    can not see) would otherwise pass for a snapshot of the first format, which a start
    rewrites (seals) before reading a row."""
    found = {}
    for k, v in _read_rows(path, db, "SELECT k, v FROM meta"):
        if k not in _META_NAMES or k in found:
            raise LogCorruptionError(f"{path}: the snapshot is damaged (a meta row reads "
                                     f"{k!r}, {v!r})")
        found[k] = v
    fmt = found.get("format")
    if fmt is not None and fmt != SNAPSHOT_FORMAT:
        raise LogCorruptionError(f"{path}: snapshot format {fmt!r} is not one this "
                                 f"version of fastactor reads ({SNAPSHOT_FORMAT})")
    return _applied_lsn(path, found), fmt


def snapshot_value(str path, str inst, str key, blob):
    """A snapshot row's value as the codec's bytes, checked (for tools that read the file)."""
    return _unseal(path, inst, key, blob)


def snapshot_row_value(str inst, str key, bytes encoded):
    """The value column of a snapshot row holding ENCODED (for tools that write the file)."""
    return _seal(inst, key, encoded)


# Bytes of the snapshot's own WAL file kept after a checkpoint (SQLite's default
# autocheckpoint, 1000 pages of 4 KiB, fits).
SNAPSHOT_WAL_LIMIT = 4 << 20


def _lenient_text(bytes b):
    return b.decode("utf-8", "replace")


def _read_chunks(str path, db, str query):
    """The rows QUERY reads from DB, in lists of up to 4096, its sqlite3 errors as
    snapshot_error gives them."""
    try:
        cursor = db.execute(query)
    except (sqlite3.Error, UnicodeDecodeError) as e:
        raise snapshot_error(path, e) from None
    while True:
        try:
            rows = cursor.fetchmany(4096)
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise snapshot_error(path, e) from None
        if not rows:
            return
        yield rows


def _read_rows(str path, db, str query):
    """The rows QUERY reads from DB, a chunk at a time (_read_chunks)."""
    for rows in _read_chunks(path, db, query):
        yield from rows


cdef void _check_pages(str path, db) except *:
    """SQLite's check of the whole file open in DB (every page, every index against its
    table), or LogCorruptionError naming PATH and what it found."""
    db.text_factory = _lenient_text    # what it says may quote damaged text
    try:
        try:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check(8)").fetchall()]
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise snapshot_error(path, e) from None
    finally:
        db.text_factory = str
    if problems != ["ok"]:
        raise LogCorruptionError(f"{path}: the snapshot is damaged (pages of "
                                 f"{db.execute('PRAGMA page_size').fetchone()[0]} "
                                 f"bytes; {'; '.join(map(str, problems))})")


cdef int _verify_rows(str path, db) except -1:
    """Checks every row of the sealed snapshot open in DB against its checksum, as reading
    them all through snapshot_rows does, without making each value's bytes: the start-up's
    row pass. Rows come in primary-key order, so an instance's name is summed once for its
    rows. LogCorruptionError naming PATH at the first that fails."""
    cdef object last = None
    cdef uint32_t prefix = 0, crc
    cdef const unsigned char *p
    cdef const char *s
    cdef Py_ssize_t n
    for rows in _read_chunks(path, db, "SELECT inst, key, value FROM kv"):
        for inst, key, blob in rows:
            if type(inst) is not str or type(key) is not str:
                raise LogCorruptionError(f"{path}: the snapshot is damaged (a row reads "
                                         f"{inst!r}, {key!r})")
            if type(blob) is not bytes or PyBytes_GET_SIZE(blob) < 5:
                raise _mismatch(path, inst, key)
            # Text read from SQLite is strict UTF-8, so it has its UTF-8 form (held in the
            # str itself when ASCII, else made once and kept with it).
            if last is None or inst != last:
                s = _utf8(inst, &n)
                prefix = cwal.fa_crc32c(0, s, <size_t>n)
                prefix = cwal.fa_crc32c(prefix, b"\0", 1)
                last = inst
            s = _utf8(key, &n)
            crc = cwal.fa_crc32c(prefix, s, <size_t>n)
            crc = cwal.fa_crc32c(crc, b"\0", 1)
            p = <const unsigned char *>PyBytes_AS_STRING(blob)
            n = PyBytes_GET_SIZE(blob) - 4
            crc = cwal.fa_crc32c(crc, p, <size_t>n)
            if crc != (<uint32_t>p[n] | (<uint32_t>p[n + 1] << 8) |
                       (<uint32_t>p[n + 2] << 16) | (<uint32_t>p[n + 3] << 24)):
                raise _mismatch(path, inst, key)
    return 0


cdef class _PageCheck:
    """_check_pages of the snapshot at PATH on a connection and thread of its own: SQLite
    lets go of the GIL while it checks, so the row pass of a start runs beside it (the two
    read the whole file each). join() waits for it and raises what it found."""

    cdef str path
    cdef object thread
    cdef object error

    def __init__(self, str path):
        self.path = path
        self.error = None
        self.thread = threading.Thread(target=self._run, name="fastactor-snapshot-check",
                                       daemon=True)
        self.thread.start()

    def _run(self):
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except (sqlite3.Error, UnicodeDecodeError) as e:
            self.error = snapshot_error(self.path, e)
            return
        try:
            _check_pages(self.path, db)
        except BaseException as e:
            self.error = e
        finally:
            db.close()

    def join(self):
        self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err


def snapshot_rows(str path, db):
    """(inst, key, encoded value) of every row of the (sealed) snapshot open in DB, each
    checked against its checksum: LogCorruptionError naming PATH at the first that fails."""
    for inst, key, blob in _read_rows(path, db, "SELECT inst, key, value FROM kv"):
        if type(inst) is not str or type(key) is not str:
            raise LogCorruptionError(f"{path}: the snapshot is damaged (a row reads "
                                     f"{inst!r}, {key!r})")
        yield inst, key, _unseal(path, inst, key, blob)


cdef set _table_names(str path, db):
    """The names of the tables and indexes in the snapshot open in DB: by name, as SQLite
    finds them (its `type` column may be damaged without harm)."""
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master").fetchall()}
    except (sqlite3.Error, UnicodeDecodeError) as e:
        raise snapshot_error(path, e) from None


def check_snapshot(str path, db):
    """Checks the whole snapshot open in DB, read-only, as a shard's start does and more:
    its pages, its meta rows, each row's checksum, and that each value decodes. DB is in
    a read transaction (one moment of a file a server may be writing). Returns (its applied
    LSN, how many rows); LogCorruptionError naming PATH for the first damage found."""
    _check_pages(path, db)
    names = _table_names(path, db)
    # As a start reads a missing table: created by then, empty.
    applied, fmt = snapshot_meta(path, db) if "meta" in names else (0, None)
    if "kv" not in names:
        return applied, 0
    if fmt is None:   # format 1, never served by this version: no checksums yet
        rows = _read_rows(path, db, "SELECT inst, key, value FROM kv")
    else:
        rows = snapshot_rows(path, db)
    n = 0
    for inst, key, encoded in rows:
        try:
            decode_value(encoded)
        except CodecError as e:
            type_name, _, name = inst.partition("\0")
            raise LogCorruptionError(f"{path}: the stored value of key {key!r} of {type_name} "
                                     f"{name!r} does not decode ({e})") from None
        n += 1
    return applied, n


@cython.final
cdef class _Store:
    """The snapshot: every instance's state as of ``applied_lsn``, in one SQLite file.

    SQLite is the deliberate choice: a B-tree gives ordered keys and range scans for list(),
    point reads need no preload (restart does not read the data), commits are crash-safe on
    their own, and it ships with Python. The write-ahead log stays the truth; this is only
    where its older part is kept in a form one can look up."""

    cdef readonly str path
    cdef object _db          # the event loop thread's connection (reads)
    cdef object _point       # its cursor for get(): one, not a cursor (and weakref) a read
    cdef readonly uint64_t applied_lsn

    def __cinit__(self, str path):
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except BaseException:
            self._db.close()           # not a database, damaged, a format we do not read
            raise
        self._point = self._db.cursor()

    cdef void _setup(self) except *:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # The whole file's structure, once, before anything is served from it or written
        # into it: a damaged page could otherwise hide rows without an error (never silent
        # loss, SPEC 8). It reads every page (BENCHMARKS: the start-up's cost), on a thread
        # of its own while this one reads every row (_verify_sealed); what it finds comes
        # first, as it says more than a row read through a damaged page would.
        pages = _PageCheck(self.path)
        try:
            self._verify_sealed()
        except BaseException:
            pages.join()
            raise
        pages.join()
        db.execute(
            "CREATE TABLE IF NOT EXISTS kv (inst TEXT NOT NULL, key TEXT NOT NULL, "
            "value BLOB NOT NULL, PRIMARY KEY (inst, key)) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")
        # Pending alarms, read at start from this index alone (it holds their values).
        db.execute(f"CREATE INDEX IF NOT EXISTS kv_alarms ON kv (inst, value) "
                   f"WHERE key = '{ALARM_KEY}'")
        self.applied_lsn, fmt = snapshot_meta(self.path, db)
        if fmt is None:
            self._seal_all()

    cdef void _verify_sealed(self) except *:
        """Reads every row once and checks its checksum (which covers its instance and key as
        well as its value), if the snapshot has its tables and is sealed (a format-1 or new
        one is sealed whole after): damage that leaves the pages well formed (a flipped bit
        in a name moves a row to another instance, unseen by this one) is found here, at
        start, not when some later read happens to meet it. Reads only."""
        db = self._db
        names = _table_names(self.path, db)
        if "meta" not in names or "kv" not in names:
            return
        if snapshot_meta(self.path, db)[1] is None:
            return
        _verify_rows(self.path, db)

    cdef void _seal_all(self) except *:
        """Brings a format-1 snapshot (or a new, empty one) to this format, in one
        transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT inst, key, value FROM kv").fetchall()
            db.executemany("UPDATE kv SET value = ? WHERE inst = ? AND key = ?",
                           [(_seal(i, k, bytes(v)), i, k) for i, k, v in rows])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (SNAPSHOT_FORMAT,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    cdef object get(self, str inst, str key):
        # fetchall() runs the statement to its end, which resets it: no read transaction
        # stays open to hold back the snapshot's checkpoints.
        try:
            rows = self._point.execute("SELECT value FROM kv WHERE inst = ? AND key = ?",
                                       (inst, key)).fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise snapshot_error(self.path, e) from None
        return _ABSENT if not rows else _unseal(self.path, inst, key, rows[0][0])

    cdef object alarms(self):
        """(inst, sealed encoded time) of every instance with an alarm, a chunk of rows at a
        time: the reader unseals each (see alarm_time)."""
        return _read_rows(self.path, self._db,
                          f"SELECT inst, value FROM kv WHERE key = '{ALARM_KEY}'")

    cdef bytes alarm_time(self, str inst, object sealed):
        return _unseal(self.path, inst, ALARM_KEY, sealed)

    cdef list range(self, str inst, object lo, bint lo_incl, object hi, bint reverse,
                    Py_ssize_t limit):
        cdef list where = ["inst = ?"]
        cdef list args = [inst]
        if lo is not None:
            where.append("key >= ?" if lo_incl else "key > ?")
            args.append(lo)
        if hi is not None:
            where.append("key < ?")
            args.append(hi)
        args.append(limit)
        try:
            rows = self._db.execute(
                f"SELECT key, value FROM kv WHERE {' AND '.join(where)} "
                f"ORDER BY key {'DESC' if reverse else 'ASC'} LIMIT ?", args).fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise snapshot_error(self.path, e) from None
        for k, _ in rows:
            if type(k) is not str:     # a key is stored as text: only damage makes it not
                raise LogCorruptionError(f"{self.path}: the snapshot is damaged (a key of "
                                         f"{inst!r} reads {k!r})")
        return [(k, _unseal(self.path, inst, k, v)) for k, v in rows]

    def apply(self, dict layers, uint64_t lsn):
        """Writes one overlay generation and its LSN in one transaction (a worker thread)."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            # SQLite's own WAL file grows to hold the largest transaction and keeps that size
            # for as long as the reading connection stays open: a checkpoint of a million
            # instances would leave hundreds of MB behind it. Past this limit the next
            # transaction that starts the file over cuts it back.
            db.execute(f"PRAGMA journal_size_limit={SNAPSHOT_WAL_LIMIT}")
            db.execute("BEGIN IMMEDIATE")
            for inst, layer in layers.items():
                if (<_Layer>layer).cleared:
                    db.execute("DELETE FROM kv WHERE inst = ?", (inst,))
                puts = [(inst, k, _seal(inst, k, v))
                        for k, v in (<_Layer>layer).puts.items() if v is not _ABSENT]
                dels = [(inst, k) for k, v in (<_Layer>layer).puts.items() if v is _ABSENT]
                if dels:
                    db.executemany("DELETE FROM kv WHERE inst = ? AND key = ?", dels)
                if puts:
                    db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", puts)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('applied_lsn', ?)", (lsn,))
            db.execute("COMMIT")
        finally:
            db.close()
        self.applied_lsn = lsn

    def close(self):
        self._db.close()


@cython.final
cdef class Storage:
    """``ctx.storage``: the instance's durable key-value storage (SPEC §3). Every call is
    awaited; none suspends the event loop when the data is cached or in the snapshot."""

    cdef _Instance _inst
    cdef bint detached             # its activation was dropped (Shard.reset_activation)

    def __cinit__(self, _Instance inst):
        self._inst = inst

    cdef _Turn _turn(self):
        cdef _Turn t = self._inst.turn
        if t is None or t.dead or self.detached:
            raise RuntimeError("storage is used outside of a turn of its instance (a task "
                               "that outlived its call?)")
        return t

    async def get(self, key, default=None):
        """The value stored under KEY, or DEFAULT; with a list of keys (at most 128), a dict
        of those stored, in key order."""
        return _get(self._turn(), key, default)

    async def put(self, key, value=_NO_VALUE):
        """Stores VALUE under KEY; with a dict alone (at most 128 entries), each of its
        entries, all or none."""
        _put(self._turn(), key, value)

    async def delete(self, key):
        """True if KEY existed; with a list of keys (at most 128), how many existed."""
        return _delete(self._turn(), key)

    async def list(self, prefix=None, start=None, start_after=None, end=None,
                   reverse=False, limit=128):
        return self._turn().list(prefix, start, start_after, end, reverse, limit)

    async def delete_all(self):
        _delete_all(self._turn())

    async def set_alarm(self, when):
        """Sets the instance's one alarm (replacing any): WHEN is ms since the epoch (int or
        float) or an aware datetime; a past time fires at once."""
        _set_alarm(self._turn(), when)

    async def get_alarm(self):
        """The alarm's time in ms since the epoch, or None."""
        return _get_alarm(self._turn())

    async def delete_alarm(self):
        _delete_alarm(self._turn())

    def transaction(self, fn=None):
        """``await transaction(fn)`` or ``async with transaction() as txn``: an atomic batch.
        If it raises, its writes are dropped and the turn's reply becomes
        ActorOutputGateError even if the error is caught; later writes still commit."""
        cdef Transaction txn = Transaction(self)
        if fn is None:
            return txn
        return txn._run(fn)


@cython.final
cdef class Transaction:
    """The ``txn`` of ``ctx.storage.transaction``: get/put/delete/list inside the batch."""

    cdef Storage _storage
    cdef _WriteSet _ws
    cdef _Turn _owner
    cdef bint _rolled_back

    def __cinit__(self, Storage storage):
        self._storage = storage
        self._ws = None

    cdef _Turn _open(self):
        cdef _Turn t = self._storage._turn()
        if self._ws is not None:
            raise RuntimeError("this transaction is already open")
        self._ws = _WriteSet()
        self._owner = t
        if t.layers is None:
            t.layers = [t.top]
        t.layers.append(self._ws)
        t.top = self._ws
        return t

    cdef void _close(self, bint ok):
        cdef _Turn t = self._owner
        cdef _WriteSet ws = self._ws
        if t.layers and t.layers[len(t.layers) - 1] is ws:
            t.layers.pop()
        t.top = t.layers[len(t.layers) - 1]
        if not ok:
            t.poisoned = True
        elif not self._rolled_back:
            t.top.merge_from(ws)

    async def _run(self, fn):
        self._open()
        try:
            r = await fn(self)
        except BaseException:
            self._close(False)
            raise
        self._close(True)
        return r

    async def __aenter__(self):
        self._open()
        return self

    async def __aexit__(self, et, ev, tb):
        self._close(et is None)
        return False

    cdef _Turn _t(self):
        cdef _Turn t = self._storage._turn()
        if t is not self._owner or t.top is not self._ws:
            raise RuntimeError("the transaction is not open")
        if self._rolled_back:
            raise RuntimeError("the transaction was rolled back")
        return t

    def rollback(self):
        """Discards the transaction's writes, as Durable Objects' ``txn.rollback()``: no error,
        and the turn's other writes still commit. Nothing more may be done in it; return
        from the transaction's block or function."""
        self._t()
        self._rolled_back = True

    async def get(self, key, default=None):
        return _get(self._t(), key, default)

    async def put(self, key, value=_NO_VALUE):
        _put(self._t(), key, value)

    async def delete(self, key):
        return _delete(self._t(), key)

    async def list(self, prefix=None, start=None, start_after=None, end=None,
                   reverse=False, limit=128):
        return self._t().list(prefix, start, start_after, end, reverse, limit)

    async def delete_all(self):
        _delete_all(self._t())

    async def set_alarm(self, when):
        _set_alarm(self._t(), when)

    async def get_alarm(self):
        return _get_alarm(self._t())

    async def delete_alarm(self):
        _delete_alarm(self._t())
