/*
 * wal_stress.c -- drives csrc/wal.c from threads with no Python in between, for the
 * sanitizers that need a whole instrumented program: ThreadSanitizer (the flusher against
 * appenders, waiters and checkpoints) and LeakSanitizer. `make tsan` and `make lsan` run it.
 * Exits non-zero on any failed check.
 */
#include "wal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

static fa_wal *wal;
static pthread_mutex_t owner = PTHREAD_MUTEX_INITIALIZER;   /* one appender at a time */

static void *
appender(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    char rec[200];
    for (unsigned i = 0; i < 2000; i++) {
        uint64_t lsn;
        size_t len = (size_t)(i % 190) + 1;
        memset(rec, (int)(id + i), len);
        CHECK(pthread_mutex_lock(&owner) == 0);
        CHECK(fa_wal_append(wal, (uint16_t)id, rec, len, &lsn) == 0);
        CHECK(pthread_mutex_unlock(&owner) == 0);
        if (i % 7 == 0) {
            CHECK(fa_wal_wait(wal, lsn) == 0);
            CHECK(fa_wal_durable_lsn(wal) >= lsn);
        } else {
            fa_wal_kick(wal);
        }
    }
    return NULL;
}

static _Atomic int appending = 1;

static void *
checkpointer(void *arg)
{
    (void)arg;
    while (atomic_load(&appending)) {
        int rc = fa_wal_checkpoint(wal, fa_wal_durable_lsn(wal) / 2);
        CHECK(rc >= 0 || rc == -EBUSY);
        CHECK(fa_wal_first_lsn(wal) <= fa_wal_durable_lsn(wal) / 2 + 1);
    }
    return NULL;
}

int
main(int argc, char **argv)
{
    char err[512];
    fa_wal_options o;
    fa_wal_reader *r;
    fa_wal_record rec;
    pthread_t t[5];
    uint64_t durable = 0, first, n = 0;
    int rc;

    CHECK(argc == 2);
    fa_wal_options_init(&o);
    o.segment_size = 16 * 1024;
    o.group_delay_us = 200;        /* exercise gather() too */
    o.group_min_records = 2;
    o.group_window_us = 100;       /* and the commit window */
    o.group_window_records = 16;
    rc = fa_wal_open(argv[1], &o, &wal, NULL, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "open: %s\n", err);
        return 1;
    }
    for (uintptr_t i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, appender, (void *)i) == 0);
    CHECK(pthread_create(&t[4], NULL, checkpointer, NULL) == 0);
    for (int i = 0; i < 4; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    atomic_store(&appending, 0);
    CHECK(pthread_join(t[4], NULL) == 0);
    first = fa_wal_first_lsn(wal);
    CHECK(fa_wal_close(wal, &durable) == 0);
    CHECK(durable == 8000);

    CHECK(fa_wal_reader_open(argv[1], first, 0, &r, err, sizeof(err)) == 0);
    while ((rc = fa_wal_reader_next(r, &rec, err, sizeof(err))) == 1) {
        CHECK(rec.lsn == first + n);
        n++;
    }
    CHECK(rc == 0);
    CHECK(first + n - 1 == 8000);
    fa_wal_reader_close(r);
    printf("wal_stress: 8000 records, 4 appender threads, checkpoints down to LSN %llu: ok\n",
           (unsigned long long)first);
    return 0;
}
