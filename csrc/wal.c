/*
 * wal.c -- segments, framing, CRC-32C, group commit, fail-stop and recovery.
 * The on-disk format and the recovery rules are specified at the top of wal.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "wal.h"
#include "compat.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#ifdef __linux__
#include <sys/eventfd.h>
#include <sys/prctl.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define FA_CRC_X86 1
#elif defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
#define FA_CRC_ARM 1
#endif

static_assert(sizeof(FA_WAL_MAGIC) - 1 == 4, "magic is four bytes");
static_assert(FA_WAL_SEG_HEADER == 4 + 2 + 2 + 8 + 8 + 4 + 4, "segment header layout");
static_assert(FA_WAL_REC_HEADER == 4 + 4 + 8 + 2 + 2 + 4, "record header layout");
static_assert(FA_WAL_DEFAULT_MAX_RECORD <= FA_WAL_RECORD_LIMIT, "default within format limit");
static_assert(sizeof(uint64_t) == 8 && sizeof(uint32_t) == 4, "fixed-width integers");

/* Name of a segment: "wal-" + 16 hex digits + ".log" */
#define SEG_NAME_LEN 24
#define SEG_NAME_FMT "wal-%016" PRIx64 ".log"
#define TMP_SUFFIX ".tmp"

/* ------------------------------------------------------------------------------------------
 * CRC-32C
 * ---------------------------------------------------------------------------------------- */

static uint32_t crc_table[8][256];
static uint32_t (*crc_impl)(uint32_t, const uint8_t *, size_t);
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static uint32_t
crc32c_table(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint32_t lo = fa_get_le32(p) ^ crc;
        uint32_t hi = fa_get_le32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(FA_CRC_X86)
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = (uint32_t)~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#elif defined(FA_CRC_ARM)
static uint32_t
crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = __crc32cb(c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __crc32cd(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __crc32cb(c, *p++);
    return ~c;
}
#endif

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int s = 1; s < 8; s++)
            crc_table[s][i] =
                (crc_table[s - 1][i] >> 8) ^ crc_table[0][crc_table[s - 1][i] & 0xff];
    crc_impl = crc32c_table;
#if defined(FA_CRC_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc_impl = crc32c_hw;
#elif defined(FA_CRC_ARM)
    crc_impl = crc32c_hw;
#endif
}

uint32_t
fa_crc32c(uint32_t crc, const void *data, size_t len)
{
    /* pthread_once can only fail on invalid arguments. */
    (void)pthread_once(&crc_once, crc_init);
    return crc_impl(crc, (const uint8_t *)data, len);
}

uint32_t
fa_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    (void)pthread_once(&crc_once, crc_init);
    return crc32c_table(crc, (const uint8_t *)data, len);
}

int
fa_crc32c_hardware(void)
{
    (void)pthread_once(&crc_once, crc_init);
    return crc_impl != crc32c_table;
}

/* ------------------------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------------------------- */

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    (void)vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

typedef struct fa_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} fa_buf;

static int
buf_reserve(fa_buf *b, size_t extra)
{
    size_t need = b->len + extra, cap;
    uint8_t *p;
    if (need < b->len)
        return -ENOMEM;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64 * 1024;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    p = realloc(b->data, cap);
    if (p == NULL)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

/* pwrite all of BUF at OFF; EINTR and short writes continue, anything else is the error. */
static int
pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int
fsync_dir(int dirfd)
{
    return fsync(dirfd) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------------------------------
 * Format: segment headers and records
 * ---------------------------------------------------------------------------------------- */

static void
encode_seg_header(uint8_t *h, uint64_t seqno, uint64_t first_lsn)
{
    memcpy(h, FA_WAL_MAGIC, 4);
    fa_put_le16(h + 4, FA_WAL_VERSION);
    fa_put_le16(h + 6, FA_WAL_SEG_HEADER);
    fa_put_le64(h + 8, seqno);
    fa_put_le64(h + 16, first_lsn);
    fa_put_le32(h + 24, 0);
    fa_put_le32(h + 28, fa_crc32c(0, h, 28));
}

/* NULL if H is a valid header for segment SEQNO, else what is wrong with it. */
static const char *
check_seg_header(const uint8_t *h, uint64_t seqno)
{
    if (memcmp(h, FA_WAL_MAGIC, 4) != 0)
        return "not a fastactor log segment (bad magic)";
    if (fa_get_le32(h + 28) != fa_crc32c(0, h, 28))
        return "segment header checksum mismatch";
    if (fa_get_le16(h + 4) != FA_WAL_VERSION)
        return "unsupported segment format version";
    if (fa_get_le16(h + 6) != FA_WAL_SEG_HEADER || fa_get_le32(h + 24) != 0)
        return "bad segment header fields";
    if (fa_get_le64(h + 8) != seqno)
        return "segment sequence number does not match its file name";
    if (fa_get_le64(h + 16) == 0)
        return "segment first LSN is zero";
    return NULL;
}

enum rec_status {
    REC_OK = 0,
    REC_SHORT_HEADER,
    REC_BAD_LENGTH,
    REC_SHORT_PAYLOAD,
    REC_BAD_CRC,
    REC_BAD_LSN,
    REC_BAD_FIELDS,
};

static const char *const rec_status_text[] = {
    "ok",
    "incomplete record header",
    "record length out of range",
    "incomplete record payload",
    "record checksum mismatch",
    "record LSN out of sequence",
    "bad record header fields",
};

/* Applies validity rules 1-5 of wal.h to the record at OFF. */
static enum rec_status
check_record(const uint8_t *base, uint64_t size, uint64_t off, uint64_t expect,
             uint64_t seg_first, uint32_t *len_out)
{
    const uint8_t *h = base + off;
    uint32_t len;
    uint64_t lsn;
    if (size - off < FA_WAL_REC_HEADER)
        return REC_SHORT_HEADER;
    len = fa_get_le32(h + 4);
    if (len > FA_WAL_RECORD_LIMIT)
        return REC_BAD_LENGTH;
    if (size - off - FA_WAL_REC_HEADER < len)
        return REC_SHORT_PAYLOAD;
    if (fa_get_le32(h) != fa_crc32c(0, h + 4, FA_WAL_REC_HEADER - 4 + (size_t)len))
        return REC_BAD_CRC;
    lsn = fa_get_le64(h + 8);
    if (lsn != expect)
        return REC_BAD_LSN;
    if (fa_get_le16(h + 18) != 0 || fa_get_le32(h + 20) > lsn - seg_first)
        return REC_BAD_FIELDS;
    *len_out = len;
    return REC_OK;
}

/*
 * Recovery step 2a/2b: the record expected to carry LSN EXPECT at OFF is invalid. Returns 1
 * if that damage is inside the last write batch (a torn tail), 0 if a later batch follows.
 */
static int
damage_is_torn_tail(const uint8_t *base, uint64_t size, uint64_t off, uint64_t expect,
                    uint64_t seg_first)
{
    uint64_t last_batch_start = 0, max_lsn = expect + (size - off) / FA_WAL_REC_HEADER;
    int found = 0;
    for (uint64_t p = off + 1; size - p >= FA_WAL_REC_HEADER; p++) {
        uint64_t lsn = fa_get_le64(base + p + 8), q = p;
        uint32_t len;
        if (lsn < expect || lsn > max_lsn)
            continue;
        /* Candidate header: follow the chain of valid records from here. */
        while (q < size && check_record(base, size, q, lsn, seg_first, &len) == REC_OK) {
            last_batch_start = lsn - fa_get_le32(base + q + 20);
            found = 1;
            q += FA_WAL_REC_HEADER + len;
            lsn++;
        }
        if (q > p)
            p = q - 1;
    }
    return !found || expect >= last_batch_start;
}

/* 1 if the bytes of BASE from OFF to SIZE are all zero: the space a log writes ahead of its
 * records (see write_ahead), not damage. */
static int
zero_tail(const uint8_t *base, uint64_t size, uint64_t off)
{
    for (uint64_t p = off; p < size; p++) {
        if (base[p] != 0)
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------
 * The directory: listing and validating segments
 * ---------------------------------------------------------------------------------------- */

typedef struct seg_entry {
    uint64_t seqno;
    uint64_t first_lsn;
} seg_entry;

typedef struct seg_list {
    seg_entry *v;
    size_t n;
    size_t cap;
} seg_list;

static int
seg_push(seg_list *l, uint64_t seqno, uint64_t first_lsn)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        seg_entry *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n].seqno = seqno;
    l->v[l->n].first_lsn = first_lsn;
    l->n++;
    return 0;
}

static int
seg_cmp(const void *a, const void *b)
{
    uint64_t x = ((const seg_entry *)a)->seqno, y = ((const seg_entry *)b)->seqno;
    return (x > y) - (x < y);
}

static int
parse_seg_name(const char *name, uint64_t *seqno)
{
    uint64_t v = 0;
    if (strlen(name) != SEG_NAME_LEN || memcmp(name, "wal-", 4) != 0 ||
        memcmp(name + 20, ".log", 4) != 0)
        return 0;
    for (int i = 4; i < 20; i++) {
        char c = name[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        v = (v << 4) | (uint64_t)d;
    }
    *seqno = v;
    return 1;
}

static int
has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/*
 * Recovery step 1: fills OUT with the segments of the log in DIRFD, sorted, consecutive,
 * with valid headers and increasing first LSNs. REMOVE_TMP: delete *.tmp files (the writer
 * does; a reader leaves them alone).
 */
static int
list_segments(int dirfd, const char *dir, int remove_tmp, seg_list *out, uint32_t *tmp_removed,
              char *err, size_t errlen)
{
    DIR *d = NULL;
    struct dirent *de;
    int rc = 0, fd2 = dup(dirfd);
    uint8_t h[FA_WAL_SEG_HEADER];

    out->n = 0;
    if (fd2 < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot list the log directory", dir);
        goto fail;
    }
    d = fdopendir(fd2);
    if (d == NULL) {
        rc = -errno;
        (void)close(fd2);
        set_err(err, errlen, "%s: cannot list the log directory", dir);
        goto fail;
    }
    rewinddir(d);
    for (;;) {
        uint64_t seqno;
        errno = 0;
        de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                rc = -errno;
                set_err(err, errlen, "%s: cannot list the log directory", dir);
                goto fail;
            }
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            strcmp(de->d_name, "LOCK") == 0)
            continue;
        if (has_suffix(de->d_name, TMP_SUFFIX)) {
            if (remove_tmp) {
                if (unlinkat(dirfd, de->d_name, 0) < 0) {
                    rc = -errno;
                    set_err(err, errlen, "%s/%s: cannot remove leftover file", dir, de->d_name);
                    goto fail;
                }
                if (tmp_removed)
                    (*tmp_removed)++;
            }
            continue;
        }
        if (!parse_seg_name(de->d_name, &seqno)) {
            rc = -EBADMSG;
            set_err(err, errlen, "%s/%s: foreign file in the log directory", dir, de->d_name);
            goto fail;
        }
        if ((rc = seg_push(out, seqno, 0)) < 0) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
    }
    if (out->n > 1)
        qsort(out->v, out->n, sizeof(*out->v), seg_cmp);
    for (size_t i = 0; i < out->n; i++) {
        char name[SEG_NAME_LEN + 1];
        const char *why;
        ssize_t n;
        int fd;
        if (i > 0 && out->v[i].seqno != out->v[i - 1].seqno + 1) {
            rc = -EBADMSG;
            set_err(err, errlen, "%s: segment missing between " SEG_NAME_FMT " and " SEG_NAME_FMT,
                    dir, out->v[i - 1].seqno, out->v[i].seqno);
            goto fail;
        }
        (void)snprintf(name, sizeof(name), SEG_NAME_FMT, out->v[i].seqno);
        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = -errno;
            set_err(err, errlen, "%s/%s: cannot open segment", dir, name);
            goto fail;
        }
        n = pread(fd, h, sizeof(h), 0);
        rc = n < 0 ? -errno : 0;
        if (close(fd) < 0 && rc == 0)
            rc = -errno;
        if (rc < 0) {
            set_err(err, errlen, "%s/%s: cannot read segment header", dir, name);
            goto fail;
        }
        why = (size_t)n < sizeof(h) ? "incomplete segment header"
                                    : check_seg_header(h, out->v[i].seqno);
        if (why == NULL) {
            out->v[i].first_lsn = fa_get_le64(h + 16);
            if (i > 0 && out->v[i].first_lsn <= out->v[i - 1].first_lsn)
                why = "segment first LSN does not follow the previous segment";
        }
        if (why != NULL) {
            rc = -EBADMSG;
            set_err(err, errlen, "%s/%s: byte offset 0: %s", dir, name, why);
            goto fail;
        }
    }
    rc = 0;
fail:
    if (d != NULL && closedir(d) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* Maps a whole file read-only; *MAP is NULL for an empty file. */
static int
map_file(int fd, uint8_t **map, uint64_t *size)
{
    struct stat st;
    void *p;
    if (fstat(fd, &st) < 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    *map = NULL;
    if (st.st_size == 0)
        return 0;
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    *map = p;
    return 0;
}

/* Creates segment SEQNO whose first record will be FIRST_LSN, durably; returns its fd. */
static int
create_segment(int dirfd, uint64_t seqno, uint64_t first_lsn, int *fd_out)
{
    char name[SEG_NAME_LEN + 1], tmp[SEG_NAME_LEN + sizeof(TMP_SUFFIX)];
    uint8_t h[FA_WAL_SEG_HEADER];
    int fd, rc;

    (void)snprintf(name, sizeof(name), SEG_NAME_FMT, seqno);
    (void)snprintf(tmp, sizeof(tmp), "%s" TMP_SUFFIX, name);
    fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    encode_seg_header(h, seqno, first_lsn);
    if ((rc = pwrite_all(fd, h, sizeof(h), 0)) < 0)
        goto fail;
    if (fa_fdatasync(fd) < 0) {
        rc = -errno;
        goto fail;
    }
    if (renameat(dirfd, tmp, dirfd, name) < 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = fsync_dir(dirfd)) < 0) {
        (void)close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
fail:
    (void)close(fd);
    (void)unlinkat(dirfd, tmp, 0);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * The log
 * ---------------------------------------------------------------------------------------- */

struct fa_wal {
    pthread_mutex_t mu;
    pthread_cond_t work_cv;      /* the flusher sleeps here when there is nothing to write */
    pthread_cond_t done_cv;      /* fa_wal_wait sleeps here */
    pthread_t thread;

    /* Under mu. */
    fa_buf fill;                 /* records appended since the flusher last took a batch */
    uint64_t next_lsn;           /* LSN the next append gets */
    uint64_t fill_first;         /* LSN of the first record in fill */
    int closing;
    int checkpointing;
    seg_list segs;               /* segments present, oldest first; the last is written */
    int fault_op;
    uint32_t fault_after;
    int fault_err;

    _Atomic uint64_t durable_lsn;
    _Atomic int error;
    _Atomic int idle;            /* the flusher waits on work_cv */
    int holding;                 /* the flusher holds the commit window open (under mu) */
    _Atomic int fault_armed;
    _Atomic uint64_t batches;
    fa_wal_stats stats;          /* under mu */
    uint64_t first_lsn;          /* oldest record kept; moves on checkpoint (under mu) */

    /* Flusher only (and open/close, when it is not running). */
    fa_buf flush;
    int segfd;
    uint64_t seg_off;            /* bytes in the segment being written */
    uint64_t seg_alloc;          /* bytes of it known written, zeros ahead included; >= seg_off */
    uint64_t batch_off;          /* where the batch being written starts in the segment */
    int halted;                  /* FA_FAULT_HALT stopped the log: keep the batch written */

    int dirfd;
    int lockfd;
    int evfd;                    /* read end (the eventfd itself on Linux) */
    int evfd_w;                  /* write end */
    fa_wal_options opts;
    int thread_started;
    char dir[4096];
};

void
fa_wal_options_init(fa_wal_options *opts)
{
    opts->segment_size = FA_WAL_DEFAULT_SEGMENT_SIZE;
    opts->max_record = FA_WAL_DEFAULT_MAX_RECORD;
    opts->max_pending = FA_WAL_DEFAULT_MAX_PENDING;
    opts->group_delay_us = FA_WAL_DEFAULT_GROUP_DELAY_US;
    opts->group_min_records = FA_WAL_DEFAULT_GROUP_MIN_RECORDS;
    opts->group_bytes = FA_WAL_DEFAULT_GROUP_BYTES;
    opts->group_window_us = 0;
    opts->group_window_records = 16;
}

static int
fault_hit(fa_wal *w, int op)
{
    int rc = 0;
    if (FA_LIKELY(!atomic_load_explicit(&w->fault_armed, memory_order_relaxed)))
        return 0;
    pthread_mutex_lock(&w->mu);
    if (w->fault_op == op) {
        if (w->fault_after == 0) {
            rc = -w->fault_err;
            w->fault_op = 0;
            atomic_store(&w->fault_armed, 0);
        } else {
            w->fault_after--;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int
fa_wal_inject_fault(fa_wal *w, int op, uint32_t after, int err)
{
    if ((op != FA_FAULT_WRITE && op != FA_FAULT_FDATASYNC && op != FA_FAULT_HALT) || err <= 0)
        return -EINVAL;
    pthread_mutex_lock(&w->mu);
    w->fault_op = op;
    w->fault_after = after;
    w->fault_err = err;
    atomic_store(&w->fault_armed, 1);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static void
notify(fa_wal *w)
{
#ifdef __linux__
    uint64_t one = 1;
    ssize_t n = write(w->evfd_w, &one, sizeof(one));
#else
    uint8_t one = 1;
    ssize_t n = write(w->evfd_w, &one, sizeof(one));
#endif
    /* EAGAIN: the counter (or pipe) is already full, so the reader will wake anyway. */
    assert(n == (ssize_t)sizeof(one) || errno == EAGAIN || errno == EINTR);
    (void)n;
}

void
fa_wal_drain_event(fa_wal *w)
{
    uint8_t buf[64];
    for (;;) {
        ssize_t n = read(w->evfd, buf, sizeof(buf));
        if (n > 0 && (size_t)n == sizeof(buf))
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        break;                   /* EAGAIN (drained), or a short read of the counter */
    }
}

/* Cuts the zeros written ahead off the segment being written, durably: it then ends exactly
 * at its last record. */
static int
cut_zeros_ahead(fa_wal *w)
{
    if (w->seg_alloc > w->seg_off) {
        if (ftruncate(w->segfd, (off_t)w->seg_off) < 0 || fa_fdatasync(w->segfd) < 0)
            return -errno;
        w->seg_alloc = w->seg_off;
    }
    return 0;
}

/* Starts segment seqno+1 for a batch whose first record is FIRST (flusher thread). */
static int
rotate(fa_wal *w, uint64_t first)
{
    uint64_t seqno;
    int fd, rc;
    /* A segment that another follows ends exactly at its last record. */
    if ((rc = cut_zeros_ahead(w)) < 0)
        return rc;
    pthread_mutex_lock(&w->mu);
    seqno = w->segs.v[w->segs.n - 1].seqno + 1;
    pthread_mutex_unlock(&w->mu);
    if ((rc = create_segment(w->dirfd, seqno, first, &fd)) < 0)
        return rc;
    pthread_mutex_lock(&w->mu);
    rc = seg_push(&w->segs, seqno, first);
    pthread_mutex_unlock(&w->mu);
    if (rc < 0) {
        (void)close(fd);
        return rc;
    }
    /* The old segment was fdatasync'ed with its last batch; a failing close loses nothing. */
    (void)close(w->segfd);
    w->segfd = fd;
    w->seg_off = w->seg_alloc = FA_WAL_SEG_HEADER;
    return 0;
}

/*
 * Writes zeros from the end of what the segment holds to past NEED, a FA_WAL_WRITE_AHEAD step
 * at a time (flusher thread). The batches then written over them leave the file's size alone,
 * so their fdatasync flushes data only: the size change (a metadata write on ext4, a journal
 * commit where there is one) is paid once per step instead of once per batch. Zeros are never
 * mistaken for a record (a record's LSN is at least 1, and its CRC is checked). Best effort:
 * if a write fails (a disk nearly full), the batch is written without zeros ahead of it and
 * the log stops only if that write fails too. It starts at seg_alloc, which write_batch keeps
 * at or past seg_off, so zeros never land on a record.
 */
static void
write_ahead(fa_wal *w, uint64_t need)
{
    static const uint8_t zeros[64 * 1024];
    uint64_t end = (need / FA_WAL_WRITE_AHEAD + 1) * FA_WAL_WRITE_AHEAD;
    while (w->seg_alloc < end) {
        uint64_t n = end - w->seg_alloc < sizeof(zeros) ? end - w->seg_alloc : sizeof(zeros);
        if (pwrite_all(w->segfd, zeros, (size_t)n, w->seg_alloc) < 0)
            return;
        w->seg_alloc += n;
    }
}

/* Seals (batch offsets, CRCs), writes and fdatasyncs one batch (flusher thread). */
static int
write_batch(fa_wal *w, fa_buf *b, uint64_t first)
{
    size_t off = 0;
    int rc;
    while (off < b->len) {
        uint8_t *h = b->data + off;
        uint32_t len = fa_get_le32(h + 4);
        fa_put_le32(h + 20, (uint32_t)(fa_get_le64(h + 8) - first));
        fa_put_le32(h, fa_crc32c(0, h + 4, FA_WAL_REC_HEADER - 4 + (size_t)len));
        off += FA_WAL_REC_HEADER + (size_t)len;
    }
    w->batch_off = w->seg_off;
    if (w->seg_off >= w->opts.segment_size && w->seg_off > FA_WAL_SEG_HEADER) {
        if ((rc = rotate(w, first)) < 0)
            return rc;
    }
    w->batch_off = w->seg_off;              /* the segment's end, should the batch fail */
    if ((rc = fault_hit(w, FA_FAULT_WRITE)) < 0)
        return rc;
    if (w->seg_off + b->len > w->seg_alloc)
        write_ahead(w, w->seg_off + b->len);
    if ((rc = pwrite_all(w->segfd, b->data, b->len, w->seg_off)) < 0)
        return rc;
    w->seg_off += b->len;
    if (w->seg_alloc < w->seg_off)
        w->seg_alloc = w->seg_off;             /* written past the zeros ahead (see above) */
    if ((rc = fault_hit(w, FA_FAULT_FDATASYNC)) < 0)
        return rc;
    if ((rc = fault_hit(w, FA_FAULT_HALT)) < 0) {
        w->halted = 1;
        return rc;
    }
    if (fa_fdatasync(w->segfd) < 0)
        return -errno;
    return 0;
}

/*
 * After a batch failed (flusher thread): cuts the segment back to where the batch began, so
 * that what of it reached the file (all of it, when fdatasync failed after the write) is not
 * found by recovery: a turn whose commit failed is not carried out later. Best effort: if the
 * disk takes neither the cut nor its fdatasync, recovery may still find those records.
 */
static void
discard_failed_batch(fa_wal *w)
{
    if (w->segfd < 0 || w->batch_off < FA_WAL_SEG_HEADER || w->halted)
        return;
    if (ftruncate(w->segfd, (off_t)w->batch_off) < 0 || fa_fdatasync(w->segfd) < 0)
        return;
    w->seg_off = w->seg_alloc = w->batch_off;
}

/* Adds US microseconds to T. */
static void
add_us(struct timespec *t, long us)
{
    t->tv_nsec += us * 1000;
    t->tv_sec += t->tv_nsec / 1000000000L;
    t->tv_nsec %= 1000000000L;
}

static int
before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/*
 * Sleeps on work_cv for one slice of US µs, or up to DEADLINE if that comes first. Appenders
 * do not signal a busy flusher (except the record that fills a held commit window), so the
 * wait mostly ends at the slice's end. Returns 0, without waiting, once DEADLINE has passed.
 * Called with mu held.
 */
static int
wait_slice(fa_wal *w, const struct timespec *deadline, long us)
{
    struct timespec now, slice;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0 || !before(&now, deadline))
        return 0;
    slice = now;
    add_us(&slice, us);
    if (before(deadline, &slice))
        slice = *deadline;
    (void)pthread_cond_timedwait(&w->work_cv, &w->mu, &slice);
    return 1;
}

/*
 * Lets the next batch gather after a large one (see group_delay_us): waits in slices of 25
 * µs for as long as records keep arriving, up to the delay or group_bytes. A burst that has
 * stopped (every writer is already waiting on this batch) ends the wait at once, so only
 * sustained load pays the delay. Called with mu held.
 */
static void
gather(fa_wal *w, uint64_t last_batch)
{
    struct timespec deadline;
    size_t seen;
    if (w->opts.group_delay_us == 0 || last_batch < w->opts.group_min_records)
        return;
    if (clock_gettime(CLOCK_MONOTONIC, &deadline) != 0)
        return;
    add_us(&deadline, (long)w->opts.group_delay_us);
    seen = w->fill.len;
    while (!w->closing && w->fill.len < w->opts.group_bytes && wait_slice(w, &deadline, 25)) {
        if (w->fill.len == seen)
            break;
        seen = w->fill.len;
    }
}

/*
 * The commit window (see group_window_us): records are waiting; holds the batch open until
 * group_window_records records or group_bytes wait, or the window ends. After a small batch
 * (fewer than group_min_records: a light load) it also ends once a quarter of the window
 * passes with no new record (the writers are all waiting on this batch, so they pay a short
 * wait, not the whole window): the flusher sleeps that first quarter, then, if records came,
 * to the window's end. After a large batch (sustained load) it sleeps to the window's end at
 * once, since more records are all but sure to come: one wake-up a window, not two. Under
 * serve's spread debits on 2 vCPUs that wake-up cost 6 % of the requests (interleaved A/B,
 * BENCHMARKS.md round 15), and a wake-up of the flusher costs the event loop too: 4 a window
 * against 2 was 52 against 36 to 40 µs of loop CPU a request (round 4). The appender that
 * fills the batch wakes the flusher. Called with mu held.
 */
static void
hold_window(fa_wal *w, uint64_t last_batch)
{
    struct timespec deadline;
    uint64_t seen;
    long slice;
    if (w->opts.group_window_us == 0 || w->fill.len == 0)
        return;
    if (clock_gettime(CLOCK_MONOTONIC, &deadline) != 0)
        return;
    add_us(&deadline, (long)w->opts.group_window_us);
    slice = w->opts.group_window_us / 4 < 25 ? 25 : (long)w->opts.group_window_us / 4;
    if (last_batch >= w->opts.group_min_records)
        slice = (long)w->opts.group_window_us;   /* sustained load: one wait, no quiet test */
    seen = w->next_lsn;
    w->holding = 1;
    while (!w->closing && w->fill.len < w->opts.group_bytes &&
           w->next_lsn - w->fill_first < w->opts.group_window_records &&
           wait_slice(w, &deadline, slice)) {
        if (w->next_lsn == seen)
            break;
        seen = w->next_lsn;
        slice = (long)w->opts.group_window_us;   /* records keep coming: to the end */
    }
    w->holding = 0;
}

const uint32_t fa_wal_latency_bounds_us[FA_WAL_LATENCY_BUCKETS - 1] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
};

static uint64_t
now_us(void)
{
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0)
        return 0;
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* Called with mu held after a successful batch. */
static void
account(fa_wal *w, uint64_t records, uint64_t bytes, uint64_t us)
{
    int b = 0;
    while (b < FA_WAL_LATENCY_BUCKETS - 1 && us > fa_wal_latency_bounds_us[b])
        b++;
    w->stats.batches++;
    w->stats.records += records;
    w->stats.bytes += bytes;
    w->stats.flush_us_sum += us;
    w->stats.flush_us_count[b]++;
}

void
fa_wal_get_stats(fa_wal *w, fa_wal_stats *out)
{
    pthread_mutex_lock(&w->mu);
    *out = w->stats;
    pthread_mutex_unlock(&w->mu);
}

static void *
flusher_main(void *arg)
{
    fa_wal *w = arg;
    uint64_t last_batch = 0;
#ifdef __linux__
    /* The commit window and gather() sleep in slices of tens of µs; Linux's default timer
     * slack (50 µs) would double them. */
    if (prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL) != 0) {
        /* Best effort: without it the slices only run long. */
    }
    /* SCHED_BATCH: a woken flusher does not preempt the thread running on its CPU (the
     * event loop, most of the time); it runs when a CPU is free or at the next tick. Its
     * work is a few µs between long sleeps, and preempting the loop cost the loop a pair of
     * context switches per batch: under serve's spread debits on 2 cores, involuntary
     * switches fell from 0.44 to 0.11 a request. */
    {
        struct sched_param sp = {0};
        if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp) != 0) {
            /* Best effort: the flusher stays SCHED_OTHER. */
        }
    }
#endif
    pthread_mutex_lock(&w->mu);
    for (;;) {
        fa_buf tmp;
        uint64_t first, last, t0, nbytes;
        int rc;
        gather(w, last_batch);
        while (w->fill.len == 0 && !w->closing) {
            atomic_store(&w->idle, 1);
            pthread_cond_wait(&w->work_cv, &w->mu);
            atomic_store(&w->idle, 0);
        }
        if (w->fill.len == 0)
            break;                                    /* closing, all written */
        hold_window(w, last_batch);
        tmp = w->flush;
        w->flush = w->fill;
        w->fill = tmp;
        w->fill.len = 0;
        first = w->fill_first;
        last = w->next_lsn - 1;
        w->fill_first = w->next_lsn;
        pthread_mutex_unlock(&w->mu);

        t0 = now_us();
        nbytes = w->flush.len;
        rc = write_batch(w, &w->flush, first);
        w->flush.len = 0;
        if (rc < 0)
            discard_failed_batch(w);

        pthread_mutex_lock(&w->mu);
        if (rc < 0) {
            /* Fail-stop: this batch and everything appended after it fail; no retry. */
            atomic_store(&w->error, rc);
            w->fill.len = 0;
            pthread_cond_broadcast(&w->done_cv);
            pthread_mutex_unlock(&w->mu);
            notify(w);
            return NULL;
        }
        atomic_store(&w->durable_lsn, last);
        atomic_fetch_add(&w->batches, 1);
        last_batch = last - first + 1;
        account(w, last_batch, nbytes, now_us() - t0);
        w->stats.seg_seqno = w->segs.v[w->segs.n - 1].seqno;
        w->stats.seg_synced = w->seg_off;
        pthread_cond_broadcast(&w->done_cv);
        pthread_mutex_unlock(&w->mu);
        notify(w);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Recovery step 2 on the last segment: finds the end, cuts a torn tail. */
static int
recover_tail(fa_wal *w, fa_wal_recovery *rec, char *err, size_t errlen)
{
    seg_entry *last = &w->segs.v[w->segs.n - 1];
    char name[SEG_NAME_LEN + 1];
    uint8_t *map = NULL;
    uint64_t size = 0, off = FA_WAL_SEG_HEADER, expect = last->first_lsn;
    enum rec_status st = REC_OK;
    int rc, ahead;

    (void)snprintf(name, sizeof(name), SEG_NAME_FMT, last->seqno);
    w->segfd = openat(w->dirfd, name, O_RDWR | O_CLOEXEC);
    if (w->segfd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s/%s: cannot open segment", w->dir, name);
        return rc;
    }
    if ((rc = map_file(w->segfd, &map, &size)) < 0) {
        set_err(err, errlen, "%s/%s: cannot map segment", w->dir, name);
        return rc;
    }
    while (off < size) {
        uint32_t len;
        st = check_record(map, size, off, expect, last->first_lsn, &len);
        if (st != REC_OK)
            break;
        off += FA_WAL_REC_HEADER + len;
        expect++;
    }
    /* Zeros written ahead are not damage: the records end at OFF and the zeros stay. */
    ahead = st != REC_OK && zero_tail(map, size, off);
    if (st != REC_OK && !ahead && !damage_is_torn_tail(map, size, off, expect, last->first_lsn)) {
        rc = -EBADMSG;
        set_err(err, errlen, "%s/%s: byte offset %" PRIu64 ": %s (LSN %" PRIu64
                ") followed by later durable records", w->dir, name, off,
                rec_status_text[st], expect);
        goto done;
    }
    if (map != NULL && munmap(map, (size_t)size) < 0) {
        map = NULL;
        rc = -errno;
        set_err(err, errlen, "%s/%s: munmap failed", w->dir, name);
        goto done;
    }
    map = NULL;
    w->seg_alloc = size;
    if (off < size && !ahead) {
        w->seg_alloc = off;
        if (ftruncate(w->segfd, (off_t)off) < 0 || fa_fdatasync(w->segfd) < 0) {
            rc = -errno;
            set_err(err, errlen, "%s/%s: cannot cut the torn tail at byte offset %" PRIu64,
                    w->dir, name, off);
            goto done;
        }
        rec->torn_offset = off;
        rec->torn_bytes = size - off;
        (void)snprintf(rec->torn_file, sizeof(rec->torn_file), "%s", name);
    }
    w->seg_off = off;
    w->next_lsn = expect;
    rc = 0;
done:
    if (map != NULL)
        (void)munmap(map, (size_t)size);
    return rc;
}

static int
open_event_fd(fa_wal *w)
{
#ifdef __linux__
    w->evfd = w->evfd_w = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return w->evfd < 0 ? -errno : 0;
#else
    int p[2];
    if (pipe(p) < 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        if (fcntl(p[i], F_SETFL, O_NONBLOCK) < 0 || fcntl(p[i], F_SETFD, FD_CLOEXEC) < 0) {
            int rc = -errno;
            (void)close(p[0]);
            (void)close(p[1]);
            return rc;
        }
    }
    w->evfd = p[0];
    w->evfd_w = p[1];
    return 0;
#endif
}

static void
wal_free(fa_wal *w)
{
    if (w->segfd >= 0)
        (void)close(w->segfd);
    if (w->evfd >= 0)
        (void)close(w->evfd);
    if (w->evfd_w >= 0 && w->evfd_w != w->evfd)
        (void)close(w->evfd_w);
    if (w->lockfd >= 0)
        (void)close(w->lockfd);
    if (w->dirfd >= 0)
        (void)close(w->dirfd);
    free(w->fill.data);
    free(w->flush.data);
    free(w->segs.v);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->done_cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

int
fa_wal_open(const char *dir, const fa_wal_options *opts, fa_wal **out, fa_wal_recovery *rec,
            char *err, size_t errlen)
{
    fa_wal_recovery scratch;
    fa_wal *w;
    int rc;

    *out = NULL;
    if (rec == NULL)
        rec = &scratch;
    memset(rec, 0, sizeof(*rec));
    if (strlen(dir) >= sizeof(w->dir)) {
        set_err(err, errlen, "log directory path too long");
        return -ENAMETOOLONG;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    w->segfd = w->evfd = w->evfd_w = w->lockfd = w->dirfd = -1;
    (void)snprintf(w->dir, sizeof(w->dir), "%s", dir);
    if (opts)
        w->opts = *opts;
    else
        fa_wal_options_init(&w->opts);
    pthread_mutex_init(&w->mu, NULL);
    {
        /* gather() waits against CLOCK_MONOTONIC. */
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&w->work_cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    pthread_cond_init(&w->done_cv, NULL);
    if (w->opts.max_record > FA_WAL_RECORD_LIMIT || w->opts.segment_size == 0 ||
        w->opts.max_pending == 0 || w->opts.group_window_records == 0 ||
        w->opts.group_delay_us > 1000000 || w->opts.group_window_us > 1000000) {
        rc = -EINVAL;
        set_err(err, errlen, "invalid log options (max_record above %u, a zero size or count, "
                "or a group delay or window over 1 s)", FA_WAL_RECORD_LIMIT);
        goto fail;
    }

    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot create the log directory", dir);
        goto fail;
    }
    w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->dirfd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot open the log directory", dir);
        goto fail;
    }
    w->lockfd = openat(w->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (w->lockfd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s/LOCK: cannot open", dir);
        goto fail;
    }
    if (flock(w->lockfd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        set_err(err, errlen, "%s: the log is open in another process or object", dir);
        goto fail;
    }
    if ((rc = list_segments(w->dirfd, dir, 1, &w->segs, &rec->tmp_removed, err, errlen)) < 0)
        goto fail;
    if (rec->tmp_removed && (rc = fsync_dir(w->dirfd)) < 0) {
        set_err(err, errlen, "%s: fsync of the directory failed", dir);
        goto fail;
    }
    if (w->segs.n == 0) {
        if ((rc = create_segment(w->dirfd, 1, 1, &w->segfd)) < 0) {
            set_err(err, errlen, "%s: cannot create the first segment", dir);
            goto fail;
        }
        if ((rc = seg_push(&w->segs, 1, 1)) < 0) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
        w->seg_off = w->seg_alloc = FA_WAL_SEG_HEADER;
        w->next_lsn = 1;
    } else if ((rc = recover_tail(w, rec, err, errlen)) < 0) {
        goto fail;
    } else if (fa_fdatasync(w->segfd) < 0) {
        /* A process killed between a write and its fdatasync leaves records that are valid
         * but only in the page cache: make them durable before anything depends on them. */
        rc = -errno;
        set_err(err, errlen, "%s: cannot fdatasync the last segment", dir);
        goto fail;
    }
    w->stats.seg_seqno = w->segs.v[w->segs.n - 1].seqno;
    w->stats.seg_synced = w->seg_off;
    w->first_lsn = w->segs.v[0].first_lsn;
    w->fill_first = w->next_lsn;
    atomic_store(&w->durable_lsn, w->next_lsn - 1);
    if ((rc = open_event_fd(w)) < 0) {
        set_err(err, errlen, "cannot create the wake-up descriptor");
        goto fail;
    }
    rc = pthread_create(&w->thread, NULL, flusher_main, w);
    if (rc != 0) {
        rc = -rc;
        set_err(err, errlen, "cannot start the flusher thread");
        goto fail;
    }
    w->thread_started = 1;
    rec->first_lsn = w->first_lsn;
    rec->next_lsn = w->next_lsn;
    rec->segments = (uint32_t)w->segs.n;
    *out = w;
    return 0;
fail:
    wal_free(w);
    return rc;
}

int
fa_wal_append(fa_wal *w, uint16_t type, const void *data, size_t len, uint64_t *lsn)
{
    uint8_t *h;
    int rc;
    if (FA_UNLIKELY(len > w->opts.max_record))
        return -EMSGSIZE;
    pthread_mutex_lock(&w->mu);
    if (FA_UNLIKELY((rc = atomic_load_explicit(&w->error, memory_order_relaxed)) != 0))
        goto out;
    if (FA_UNLIKELY(w->closing)) {
        rc = -EBADF;
        goto out;
    }
    if (FA_UNLIKELY(w->fill.len > 0 &&
                    w->fill.len + FA_WAL_REC_HEADER + len > w->opts.max_pending)) {
        rc = -ENOBUFS;
        goto out;
    }
    if (FA_UNLIKELY((rc = buf_reserve(&w->fill, FA_WAL_REC_HEADER + len)) < 0))
        goto out;
    h = w->fill.data + w->fill.len;
    /* CRC and batch offset are filled in by the flusher, off this thread. */
    fa_put_le32(h, 0);
    fa_put_le32(h + 4, (uint32_t)len);
    fa_put_le64(h + 8, w->next_lsn);
    fa_put_le16(h + 16, type);
    fa_put_le16(h + 18, 0);
    fa_put_le32(h + 20, 0);
    if (len)
        memcpy(h + FA_WAL_REC_HEADER, data, len);
    w->fill.len += FA_WAL_REC_HEADER + len;
    *lsn = w->next_lsn++;
    /* A flusher holding the commit window is woken once, by the record that fills it. */
    if (w->holding && (w->next_lsn - w->fill_first == w->opts.group_window_records ||
                       w->fill.len >= w->opts.group_bytes))
        pthread_cond_signal(&w->work_cv);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void
fa_wal_kick(fa_wal *w)
{
    /* Only an idle flusher needs a signal; a busy one takes the next batch by itself. */
    if (atomic_load(&w->idle)) {
        pthread_mutex_lock(&w->mu);
        pthread_cond_signal(&w->work_cv);
        pthread_mutex_unlock(&w->mu);
    }
}

int
fa_wal_wait(fa_wal *w, uint64_t lsn)
{
    int rc;
    pthread_mutex_lock(&w->mu);
    if (lsn >= w->next_lsn) {
        pthread_mutex_unlock(&w->mu);
        return -EINVAL;
    }
    pthread_cond_signal(&w->work_cv);
    while (atomic_load(&w->durable_lsn) < lsn && atomic_load(&w->error) == 0)
        pthread_cond_wait(&w->done_cv, &w->mu);
    rc = atomic_load(&w->durable_lsn) >= lsn ? 0 : atomic_load(&w->error);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

uint64_t
fa_wal_durable_lsn(const fa_wal *w)
{
    return atomic_load(&((fa_wal *)w)->durable_lsn);
}

uint64_t
fa_wal_last_lsn(const fa_wal *w)
{
    fa_wal *m = (fa_wal *)w;
    uint64_t v;
    pthread_mutex_lock(&m->mu);
    v = m->next_lsn - 1;
    pthread_mutex_unlock(&m->mu);
    return v;
}

uint64_t
fa_wal_first_lsn(const fa_wal *w)
{
    fa_wal *m = (fa_wal *)w;
    uint64_t v;
    pthread_mutex_lock(&m->mu);
    v = m->first_lsn;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int
fa_wal_error(const fa_wal *w)
{
    return atomic_load(&((fa_wal *)w)->error);
}

uint64_t
fa_wal_batches(const fa_wal *w)
{
    return atomic_load(&((fa_wal *)w)->batches);
}

int
fa_wal_event_fd(const fa_wal *w)
{
    return w->evfd;
}

int
fa_wal_checkpoint(fa_wal *w, uint64_t lsn)
{
    int removed = 0, rc = 0;
    pthread_mutex_lock(&w->mu);
    if (w->checkpointing) {
        pthread_mutex_unlock(&w->mu);
        return -EBUSY;
    }
    if (lsn > atomic_load(&w->durable_lsn)) {
        pthread_mutex_unlock(&w->mu);
        return -EINVAL;
    }
    w->checkpointing = 1;
    /* Oldest first, one directory fsync each: after a crash the segments left are always
     * a suffix, never a set with a hole. */
    while (w->segs.n > 1 && w->segs.v[1].first_lsn <= lsn + 1) {
        char name[SEG_NAME_LEN + 1];
        (void)snprintf(name, sizeof(name), SEG_NAME_FMT, w->segs.v[0].seqno);
        pthread_mutex_unlock(&w->mu);
        rc = unlinkat(w->dirfd, name, 0) < 0 ? -errno : fsync_dir(w->dirfd);
        pthread_mutex_lock(&w->mu);
        if (rc < 0)
            break;
        memmove(w->segs.v, w->segs.v + 1, (w->segs.n - 1) * sizeof(*w->segs.v));
        w->segs.n--;
        w->first_lsn = w->segs.v[0].first_lsn;
        removed++;
    }
    w->checkpointing = 0;
    pthread_mutex_unlock(&w->mu);
    return rc < 0 ? rc : removed;
}

void
fa_wal_abort(fa_wal *w)
{
    pthread_mutex_lock(&w->mu);
    w->fill.len = 0;
    pthread_mutex_unlock(&w->mu);
    (void)fa_wal_close(w, NULL);
}

int
fa_wal_close(fa_wal *w, uint64_t *durable)
{
    int rc;
    pthread_mutex_lock(&w->mu);
    w->closing = 1;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    if (w->thread_started && (rc = pthread_join(w->thread, NULL)) != 0)
        return -rc;       /* cannot free memory the flusher may still use */
    rc = atomic_load(&w->error);
    if (durable != NULL)
        *durable = atomic_load(&w->durable_lsn);
    /* A closed log's last segment ends at its last record, like every other segment. Best
     * effort: left undone (the log failed, or the cut does), the zeros are read as the end of
     * the records on open, and every record is already durable. */
    if (w->segfd >= 0 && rc == 0 && cut_zeros_ahead(w) < 0) {
        /* The zeros stay, harmlessly. */
    }
    if (w->segfd >= 0 && close(w->segfd) < 0 && rc == 0)
        rc = -errno;
    w->segfd = -1;
    wal_free(w);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Reading the log back
 * ---------------------------------------------------------------------------------------- */

struct fa_wal_reader {
    int dirfd;
    seg_list segs;
    size_t idx;              /* segment being read */
    uint8_t *map;
    uint64_t map_size;
    int mapped;
    uint64_t off;
    uint64_t expect;         /* LSN the next record must have */
    uint64_t from, upto;
    int done;
    char dir[4096];
};

int
fa_wal_reader_open(const char *dir, uint64_t from, uint64_t upto, fa_wal_reader **out,
                   char *err, size_t errlen)
{
    fa_wal_reader *r;
    int rc;

    *out = NULL;
    if (strlen(dir) >= sizeof(r->dir)) {
        set_err(err, errlen, "log directory path too long");
        return -ENAMETOOLONG;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    (void)snprintf(r->dir, sizeof(r->dir), "%s", dir);
    r->from = from ? from : 1;
    r->upto = upto;
    r->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r->dirfd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot open the log directory", dir);
        goto fail;
    }
    if ((rc = list_segments(r->dirfd, dir, 0, &r->segs, NULL, err, errlen)) < 0)
        goto fail;
    if (r->segs.n == 0 || (upto != 0 && upto < r->from)) {
        r->done = 1;
    } else {
        if (r->from < r->segs.v[0].first_lsn) {
            rc = -ERANGE;
            set_err(err, errlen, "%s: LSN %" PRIu64 " is older than the oldest record kept (%"
                    PRIu64 "); it was removed by a checkpoint", dir, r->from,
                    r->segs.v[0].first_lsn);
            goto fail;
        }
        /* Start in the last segment whose first LSN is <= from. */
        while (r->idx + 1 < r->segs.n && r->segs.v[r->idx + 1].first_lsn <= r->from)
            r->idx++;
        r->expect = r->segs.v[r->idx].first_lsn;
    }
    *out = r;
    return 0;
fail:
    fa_wal_reader_close(r);
    return rc;
}

static int
reader_unmap(fa_wal_reader *r)
{
    int rc = 0;
    if (r->map != NULL && munmap(r->map, (size_t)r->map_size) < 0)
        rc = -errno;
    r->map = NULL;
    r->mapped = 0;
    return rc;
}

int
fa_wal_reader_next(fa_wal_reader *r, fa_wal_record *rec, char *err, size_t errlen)
{
    char name[SEG_NAME_LEN + 1];
    for (;;) {
        seg_entry *seg;
        enum rec_status st;
        uint32_t len;
        int rc, last;
        const uint8_t *h;

        if (r->done)
            return 0;
        seg = &r->segs.v[r->idx];
        last = r->idx + 1 == r->segs.n;
        (void)snprintf(name, sizeof(name), SEG_NAME_FMT, seg->seqno);
        if (!r->mapped) {
            int fd = openat(r->dirfd, name, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                rc = -errno;
                set_err(err, errlen, "%s/%s: cannot open segment", r->dir, name);
                return rc;
            }
            rc = map_file(fd, &r->map, &r->map_size);
            if (close(fd) < 0 && rc == 0)
                rc = -errno;
            if (rc < 0) {
                set_err(err, errlen, "%s/%s: cannot map segment", r->dir, name);
                return rc;
            }
            r->mapped = 1;
            r->off = FA_WAL_SEG_HEADER;
            if (seg->first_lsn != r->expect) {
                set_err(err, errlen, "%s/%s: byte offset 0: first LSN %" PRIu64
                        " does not follow the previous segment (expected %" PRIu64 ")",
                        r->dir, name, seg->first_lsn, r->expect);
                return -EBADMSG;
            }
        }
        if (r->off >= r->map_size) {
            if (last) {
                r->done = 1;
                return 0;
            }
            if ((rc = reader_unmap(r)) < 0) {
                set_err(err, errlen, "%s/%s: munmap failed", r->dir, name);
                return rc;
            }
            r->idx++;
            continue;
        }
        if (r->upto != 0 && r->expect > r->upto) {
            r->done = 1;
            return 0;
        }
        st = check_record(r->map, r->map_size, r->off, r->expect, seg->first_lsn, &len);
        if (st != REC_OK) {
            if (last && (zero_tail(r->map, r->map_size, r->off) ||
                         damage_is_torn_tail(r->map, r->map_size, r->off, r->expect,
                                             seg->first_lsn))) {
                r->done = 1;
                return 0;
            }
            set_err(err, errlen, "%s/%s: byte offset %" PRIu64 ": %s (LSN %" PRIu64 ")",
                    r->dir, name, r->off, rec_status_text[st], r->expect);
            return -EBADMSG;
        }
        h = r->map + r->off;
        r->off += FA_WAL_REC_HEADER + len;
        r->expect++;
        if (fa_get_le64(h + 8) < r->from)
            continue;
        rec->lsn = fa_get_le64(h + 8);
        rec->type = fa_get_le16(h + 16);
        rec->len = len;
        rec->data = h + FA_WAL_REC_HEADER;
        return 1;
    }
}

uint64_t
fa_wal_reader_next_lsn(const fa_wal_reader *r)
{
    return r->expect;
}

void
fa_wal_reader_close(fa_wal_reader *r)
{
    if (r == NULL)
        return;
    (void)reader_unmap(r);
    if (r->dirfd >= 0)
        (void)close(r->dirfd);
    free(r->segs.v);
    free(r);
}

/* ------------------------------------------------------------------------------------------
 * Atomic files (snapshots)
 * ---------------------------------------------------------------------------------------- */

int
fa_write_file_atomic(const char *dir, const char *name, const void *data, size_t len)
{
    char tmp[1024];
    int dirfd, fd = -1, rc;

    if (strchr(name, '/') != NULL || name[0] == '\0' || name[0] == '.')
        return -EINVAL;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s" TMP_SUFFIX, name) >= sizeof(tmp))
        return -ENAMETOOLONG;
    dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return -errno;
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    if ((rc = pwrite_all(fd, data, len, 0)) < 0)
        goto fail;
    if (fa_fdatasync(fd) < 0) {
        rc = -errno;
        goto fail;
    }
    rc = close(fd) < 0 ? -errno : 0;
    fd = -1;
    if (rc < 0)
        goto fail;
    if (renameat(dirfd, tmp, dirfd, name) < 0) {
        rc = -errno;
        goto fail;
    }
    rc = fsync_dir(dirfd);
    (void)close(dirfd);
    return rc;
fail:
    if (fd >= 0)
        (void)close(fd);
    (void)unlinkat(dirfd, tmp, 0);
    (void)close(dirfd);
    return rc;
}
