# The C write-ahead log (csrc/wal.h). Declarations only; see wal.h for the contract.
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "wal.h" nogil:
    ctypedef struct fa_wal:
        pass

    ctypedef struct fa_wal_reader:
        pass

    ctypedef struct fa_wal_options:
        uint64_t segment_size
        uint32_t max_record
        uint64_t max_pending
        uint32_t group_delay_us
        uint32_t group_min_records
        uint64_t group_bytes
        uint32_t group_window_us
        uint32_t group_window_records

    ctypedef struct fa_wal_recovery:
        uint64_t first_lsn
        uint64_t next_lsn
        uint32_t segments
        uint32_t tmp_removed
        uint64_t torn_offset
        uint64_t torn_bytes
        char torn_file[64]

    int FA_WAL_LATENCY_BUCKETS
    const uint32_t fa_wal_latency_bounds_us[11]

    ctypedef struct fa_wal_stats:
        uint64_t batches
        uint64_t records
        uint64_t bytes
        uint64_t flush_us_sum
        uint64_t flush_us_count[12]
        uint64_t seg_seqno
        uint64_t seg_synced

    ctypedef struct fa_wal_record:
        uint64_t lsn
        uint16_t type
        uint32_t len
        const unsigned char *data

    int FA_FAULT_WRITE
    int FA_FAULT_FDATASYNC
    int FA_FAULT_HALT
    unsigned int FA_WAL_RECORD_LIMIT
    int FA_WAL_REC_HEADER

    void fa_wal_options_init(fa_wal_options *opts)
    int fa_wal_open(const char *dir, const fa_wal_options *opts, fa_wal **out,
                    fa_wal_recovery *rec, char *err, size_t errlen)
    int fa_wal_append(fa_wal *w, uint16_t type, const void *data, size_t len, uint64_t *lsn)
    void fa_wal_kick(fa_wal *w)
    int fa_wal_wait(fa_wal *w, uint64_t lsn)
    uint64_t fa_wal_durable_lsn(const fa_wal *w)
    uint64_t fa_wal_last_lsn(const fa_wal *w)
    uint64_t fa_wal_first_lsn(const fa_wal *w)
    int fa_wal_error(const fa_wal *w)
    uint64_t fa_wal_batches(const fa_wal *w)
    void fa_wal_get_stats(fa_wal *w, fa_wal_stats *out)
    int fa_wal_event_fd(const fa_wal *w)
    void fa_wal_drain_event(fa_wal *w)
    int fa_wal_checkpoint(fa_wal *w, uint64_t lsn)
    int fa_wal_close(fa_wal *w, uint64_t *durable)
    void fa_wal_abort(fa_wal *w)
    int fa_wal_inject_fault(fa_wal *w, int op, uint32_t after, int err)

    int fa_wal_reader_open(const char *dir, uint64_t start, uint64_t upto, fa_wal_reader **out,
                           char *err, size_t errlen)
    int fa_wal_reader_next(fa_wal_reader *r, fa_wal_record *rec, char *err, size_t errlen)
    void fa_wal_reader_close(fa_wal_reader *r)
    uint64_t fa_wal_reader_next_lsn(const fa_wal_reader *r)

    int fa_write_file_atomic(const char *dir, const char *name, const void *data, size_t len)
    uint32_t fa_crc32c(uint32_t crc, const void *data, size_t len)
    int fa_crc32c_hardware()
