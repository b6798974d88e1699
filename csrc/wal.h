/*
 * wal.h -- the fastactor write-ahead log.
 *
 * PURPOSE
 *
 *   Every write an actor makes is appended to this log, and the reply to the caller is held
 *   until the log says the record is on stable storage. The log is the truth: snapshots only
 *   shorten how much of it a restart replays. Appends are a memcpy into an in-memory batch on
 *   the caller's thread; one flusher thread writes each batch with one write() and makes it
 *   durable with one fdatasync() (group commit), then publishes the durable LSN and wakes the
 *   owner through a file descriptor its event loop watches.
 *
 * THE DIRECTORY
 *
 *   A log is a directory holding:
 *     LOCK                        empty; held with flock(LOCK_EX) while the log is open, so two
 *                                 processes never append to one log.
 *     wal-SSSSSSSSSSSSSSSS.log    a segment; S is its sequence number, 16 lower-case hex digits.
 *     *.tmp                       a segment being created; removed on open.
 *   Any other name is a foreign file and opening fails with an error naming it.
 *   Sequence numbers of the segments present are consecutive; the first may be above 1 once
 *   a checkpoint has removed older segments.
 *
 * SEGMENT HEADER (32 bytes, all integers little-endian)
 *
 *     0: magic, the four bytes 'F' 'A' 'W' 'L'
 *     4: format version, 16 bits, currently 1
 *     6: header size in bytes, 16 bits, currently 32
 *     8: sequence number of the segment, 64 bits; equals the number in the file name
 *    16: first LSN, 64 bits: the LSN the first record of this segment has (or will have)
 *    24: reserved, 32 bits, zero
 *    28: CRC-32C of bytes 0..27
 *
 *   A segment file is created under a .tmp name, its header written and fdatasync'ed, then
 *   renamed into place and the directory fsync'ed, so a file with a segment name always has
 *   a complete header.
 *
 * RECORD (24-byte header, then the payload; records follow each other with no padding)
 *
 *     0: CRC-32C, 32 bits, of header bytes 4..23 followed by the payload
 *     4: payload length in bytes, 32 bits
 *     8: LSN, 64 bits: 1 for the first record ever appended, then +1 per record
 *    16: record type, 16 bits, chosen by the caller
 *    18: flags, 16 bits, zero
 *    20: batch offset, 32 bits: this record's LSN minus the LSN of the first record of the
 *        write batch it was written in (one write() + one fdatasync())
 *
 * VALIDITY
 *
 *   A record at byte offset OFF of a segment whose previous record had LSN E-1 is valid iff
 *     1. OFF + 24 <= the file size;
 *     2. its length is at most FA_WAL_RECORD_LIMIT and OFF + 24 + length <= the file size;
 *     3. the stored CRC-32C equals the CRC-32C computed as above;
 *     4. its LSN is E;
 *     5. its flags are zero and LSN - batch offset >= the segment's first LSN (a batch never
 *        spans two segments).
 *   A segment header is valid iff its magic, version, size and CRC match and its sequence
 *   number equals the one in the file name. Within a segment the records form an unbroken
 *   run of valid records from offset 32 to the end of the file, with one exception: the
 *   segment being written may end in zero bytes after its last record. The flusher writes
 *   zeros FA_WAL_WRITE_AHEAD bytes at a time ahead of the records, so that the fdatasync of a
 *   batch written over them does not also have to record a new file size. A segment that
 *   another follows, and the last one of a log closed cleanly, end exactly at their last
 *   record. The first record of segment N+1 has the LSN after the last record of segment N.
 *
 * THE CHECKSUM
 *
 *   CRC-32C (Castagnoli): polynomial 0x1EDC6F41, reflected (0x82F63B78), initial value
 *   0xFFFFFFFF, final xor 0xFFFFFFFF; CRC-32C("123456789") = 0xE3069283. Computed with the
 *   SSE4.2 or ARMv8 CRC instruction when the CPU has it, else with slicing-by-8 tables.
 *
 * BARRIERS
 *
 *   The flusher writes batch N+1 only after fdatasync of batch N returned. So after a crash
 *   every byte before the start of the last batch written is on disk, and only the last batch
 *   can be torn. A batch is never split across segments; rotation happens between batches.
 *
 * RECOVERY (fa_wal_open)
 *
 *   1. Take the lock; remove *.tmp files; refuse foreign files; list segments by sequence
 *      number; refuse a gap in sequence numbers; check every segment header.
 *   2. Scan the last segment record by record. At the first invalid record at OFF: if every
 *      byte from OFF to the end of the file is zero, the records end at OFF (the zeros stay
 *      and later batches are written over them); otherwise
 *      a. look past OFF for valid records (a header whose CRC verifies, with an LSN that
 *         could follow); take the batch start (LSN - batch offset) of the last one;
 *      b. if there is none, or if the damaged record's expected LSN E is at or above that
 *         batch start, the damage lies inside the last batch: it is a torn tail. Truncate the
 *         file at OFF, fdatasync it, report the file, offset and bytes dropped.
 *      c. otherwise a batch that was followed by another batch (so was fdatasync'ed) is
 *         damaged: opening fails naming the file and OFF.
 *   3. Earlier segments are checked record by record when replayed (fa_wal_reader_*): any
 *      invalid record, a segment that does not end exactly at its last valid record, or a
 *      break in LSNs between segments fails the replay naming the file and offset. So
 *      opening is fast and no record is ever handed out without its CRC checked.
 *   Never silent loss: the only thing ever dropped is a torn tail of the last batch, whose
 *   fdatasync can not have completed (a bit flip inside the last, already synced, batch can
 *   not be told from a torn write and is treated the same way).
 *
 * FAILURE
 *
 *   If write() or fdatasync() fails, the log stops: the batch in flight and every later one
 *   fail with that error, fa_wal_append refuses further records, and the durable LSN never
 *   moves again. An fdatasync is never retried (after a failure the kernel may have dropped
 *   the dirty pages and marked them clean). Reopening recovers the durable prefix.
 *
 * API CONVENTIONS
 *
 *   Functions return 0 (or a count) on success and -errno on failure. One fa_wal is owned by
 *   one thread (the event loop's); fa_wal_durable_lsn, fa_wal_error and fa_wal_event_fd may be
 *   read from any thread.
 */
#ifndef FA_WAL_H
#define FA_WAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FA_WAL_MAGIC          "FAWL"
#define FA_WAL_VERSION        1
#define FA_WAL_SEG_HEADER     32
#define FA_WAL_REC_HEADER     24
#define FA_WAL_RECORD_LIMIT   (1u << 30)     /* format limit on one payload: 1 GiB */

#define FA_WAL_DEFAULT_SEGMENT_SIZE  (64ull << 20)
#define FA_WAL_WRITE_AHEAD           (1ull << 20)   /* zeros written ahead of the records */
#define FA_WAL_DEFAULT_MAX_RECORD    (32u << 20)
#define FA_WAL_DEFAULT_MAX_PENDING   (1ull << 30)
#define FA_WAL_DEFAULT_GROUP_DELAY_US     0
#define FA_WAL_DEFAULT_GROUP_MIN_RECORDS  16
#define FA_WAL_DEFAULT_GROUP_BYTES        (256u << 10)

/* Operations fa_wal_inject_fault can fail. FA_FAULT_HALT fails the fdatasync of a batch
 * already written and leaves the batch in the file, as a power cut between the write and the
 * fdatasync would (a real failure cuts it off again); for power-loss simulations. */
#define FA_FAULT_WRITE      1
#define FA_FAULT_FDATASYNC  2
#define FA_FAULT_HALT       3

typedef struct fa_wal fa_wal;
typedef struct fa_wal_reader fa_wal_reader;

typedef struct fa_wal_options {
    uint64_t segment_size;   /* start a new segment once the current one holds this much */
    uint32_t max_record;     /* largest payload fa_wal_append accepts (-EMSGSIZE above) */
    uint64_t max_pending;    /* appended, not yet written bytes before -ENOBUFS */
    /* Group commit under load: when a batch held at least group_min_records records, the
     * flusher lets the next one gather for up to group_delay_us (or until group_bytes are
     * waiting) before writing it. Fewer fdatasyncs leave more CPU to the appenders; a lone
     * writer (small batches) never waits. group_delay_us = 0 turns it off. */
    uint32_t group_delay_us;
    uint32_t group_min_records;
    uint64_t group_bytes;
    /* A commit window: once records wait, the flusher holds the batch open for up to
     * group_window_us, or until group_window_records records (or group_bytes) wait; after a
     * batch of fewer than group_min_records (a light load), also until no record has come in
     * the window's first quarter. For servers whose CPU is the limit:
     * each fdatasync costs CPU, and one per few records is a large share of a cheap request;
     * a short window makes batches larger at a bounded cost in latency. 0 turns it off (the
     * default). */
    uint32_t group_window_us;
    uint32_t group_window_records;
} fa_wal_options;

typedef struct fa_wal_recovery {
    uint64_t first_lsn;      /* LSN of the oldest record still in the log (or next_lsn) */
    uint64_t next_lsn;       /* LSN the next append gets */
    uint32_t segments;       /* segment files present after recovery */
    uint32_t tmp_removed;    /* leftover *.tmp files removed */
    uint64_t torn_offset;    /* where a torn tail was cut off, if torn_bytes > 0 */
    uint64_t torn_bytes;     /* bytes dropped from the end of the last segment */
    char torn_file[64];      /* name of the segment that was cut */
} fa_wal_recovery;

/* Upper bounds (µs) of the flush latency histogram's buckets; the last bucket is +Inf. */
#define FA_WAL_LATENCY_BUCKETS 12
typedef struct fa_wal_stats {
    uint64_t batches;                        /* write + fdatasync rounds that succeeded */
    uint64_t records;                        /* records made durable */
    uint64_t bytes;                          /* bytes written to segments (records only) */
    uint64_t flush_us_sum;                   /* total µs spent in write + fdatasync */
    uint64_t flush_us_count[FA_WAL_LATENCY_BUCKETS];  /* per bucket, not cumulative */
    uint64_t seg_seqno;                      /* the segment being written ... */
    uint64_t seg_synced;                     /* ... and its bytes known durable */
} fa_wal_stats;

extern const uint32_t fa_wal_latency_bounds_us[FA_WAL_LATENCY_BUCKETS - 1];

typedef struct fa_wal_record {
    uint64_t lsn;
    uint16_t type;
    uint32_t len;
    const uint8_t *data;     /* valid until the next fa_wal_reader_next / _close */
} fa_wal_record;

void fa_wal_options_init(fa_wal_options *opts);

/* Opens (creating if needed) the log in DIR and recovers it. On -EBADMSG (damage) or any
 * other failure a message naming the file and byte offset is left in ERR. */
int fa_wal_open(const char *dir, const fa_wal_options *opts, fa_wal **out,
                fa_wal_recovery *rec, char *err, size_t errlen);

/* Copies one record into the current batch; no syscall. -EMSGSIZE if LEN is above
 * max_record, -ENOBUFS past max_pending, or the error that stopped the log. */
int fa_wal_append(fa_wal *w, uint16_t type, const void *data, size_t len, uint64_t *lsn);

/* Asks the flusher to write what has been appended (a no-op while it is busy: it takes the
 * next batch as soon as the current fdatasync returns). */
void fa_wal_kick(fa_wal *w);

/* Blocks until LSN is durable (0) or the log has failed (its -errno). */
int fa_wal_wait(fa_wal *w, uint64_t lsn);

uint64_t fa_wal_durable_lsn(const fa_wal *w);
uint64_t fa_wal_last_lsn(const fa_wal *w);      /* last LSN handed out by append */
uint64_t fa_wal_first_lsn(const fa_wal *w);     /* oldest LSN still in the log */
int fa_wal_error(const fa_wal *w);              /* 0, or -errno that stopped the log */
uint64_t fa_wal_batches(const fa_wal *w);       /* batches made durable since open */
void fa_wal_get_stats(fa_wal *w, fa_wal_stats *out);

/* A descriptor that becomes readable each time the durable LSN moves or the log fails;
 * fa_wal_drain_event resets it. */
int fa_wal_event_fd(const fa_wal *w);
void fa_wal_drain_event(fa_wal *w);

/* Declares that everything up to LSN is covered by a durable snapshot: removes the segments
 * all of whose records are <= LSN, oldest first, fsyncing the directory after each, never the
 * segment being written. Returns the number removed. Blocks on the filesystem. */
int fa_wal_checkpoint(fa_wal *w, uint64_t lsn);

/* Writes what is appended, stops the flusher and frees W. Returns 0 or the error that
 * stopped the log; the final durable LSN goes to *DURABLE (if not NULL). */
int fa_wal_close(fa_wal *w, uint64_t *durable);

/* Stops the flusher as a crash would: records not yet taken by the flusher are dropped (a
 * batch being written is finished). Frees W. For tests that simulate a crash. */
void fa_wal_abort(fa_wal *w);

/* Test hook: the AFTER+1-th next write() or fdatasync() (OP) fails with -ERR. */
int fa_wal_inject_fault(fa_wal *w, int op, uint32_t after, int err);

/* Reads records with FROM <= LSN <= UPTO (UPTO 0: to the end) from the log in DIR, checking
 * each as RECOVERY describes. A reader does not take the lock; it may run beside an open
 * fa_wal as long as UPTO <= that log's durable LSN. -ERANGE if FROM is older than the oldest
 * record kept. */
int fa_wal_reader_open(const char *dir, uint64_t from, uint64_t upto, fa_wal_reader **out,
                       char *err, size_t errlen);
/* 1 and the record in REC, 0 at the end, or -errno with a message in ERR. */
int fa_wal_reader_next(fa_wal_reader *r, fa_wal_record *rec, char *err, size_t errlen);
void fa_wal_reader_close(fa_wal_reader *r);
/* The LSN the next record read would have. Once fa_wal_reader_next returned 0 (read to the
 * end, UPTO 0): one past the log's last valid record, its torn tail dropped, as fa_wal_open
 * would find it; 0 if DIR holds no segment. Tools compare it with a snapshot's LSN. */
uint64_t fa_wal_reader_next_lsn(const fa_wal_reader *r);

/* Writes DATA to DIR/NAME atomically: a temporary file, fdatasync, rename, fsync of DIR. */
int fa_write_file_atomic(const char *dir, const char *name, const void *data, size_t len);

uint32_t fa_crc32c(uint32_t crc, const void *data, size_t len);
int fa_crc32c_hardware(void);   /* 1 if the instruction path is in use */
uint32_t fa_crc32c_sw(uint32_t crc, const void *data, size_t len);   /* table path, tests */

#ifdef __cplusplus
}
#endif
#endif /* FA_WAL_H */
