"""Builds csrc/wal.c on its own with cffi, so tests can drive the C API directly (and, with
FASTACTOR_SANITIZE=1, under AddressSanitizer and UBSan)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import cffi

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

CDEF = """
typedef struct fa_wal fa_wal;
typedef struct fa_wal_reader fa_wal_reader;
typedef struct {
    uint64_t segment_size; uint32_t max_record; uint64_t max_pending;
    uint32_t group_delay_us; uint32_t group_min_records; uint64_t group_bytes;
    uint32_t group_window_us; uint32_t group_window_records;
} fa_wal_options;
typedef struct {
    uint64_t first_lsn; uint64_t next_lsn; uint32_t segments; uint32_t tmp_removed;
    uint64_t torn_offset; uint64_t torn_bytes; char torn_file[64];
} fa_wal_recovery;
typedef struct { uint64_t lsn; uint16_t type; uint32_t len; const uint8_t *data; } fa_wal_record;
void fa_wal_options_init(fa_wal_options *opts);
int fa_wal_open(const char *dir, const fa_wal_options *opts, fa_wal **out,
                fa_wal_recovery *rec, char *err, size_t errlen);
int fa_wal_append(fa_wal *w, uint16_t type, const void *data, size_t len, uint64_t *lsn);
void fa_wal_kick(fa_wal *w);
int fa_wal_wait(fa_wal *w, uint64_t lsn);
uint64_t fa_wal_durable_lsn(const fa_wal *w);
uint64_t fa_wal_last_lsn(const fa_wal *w);
int fa_wal_error(const fa_wal *w);
int fa_wal_event_fd(const fa_wal *w);
void fa_wal_drain_event(fa_wal *w);
int fa_wal_checkpoint(fa_wal *w, uint64_t lsn);
int fa_wal_close(fa_wal *w, uint64_t *durable);
int fa_wal_inject_fault(fa_wal *w, int op, uint32_t after, int err);
int fa_wal_reader_open(const char *dir, uint64_t start, uint64_t upto, fa_wal_reader **out,
                       char *err, size_t errlen);
int fa_wal_reader_next(fa_wal_reader *r, fa_wal_record *rec, char *err, size_t errlen);
void fa_wal_reader_close(fa_wal_reader *r);
int fa_write_file_atomic(const char *dir, const char *name, const void *data, size_t len);
uint32_t fa_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t fa_crc32c_sw(uint32_t crc, const void *data, size_t len);
int fa_crc32c_hardware(void);
"""


def build(tmpdir: Path) -> tuple[Any, Any]:
    """Compiles the harness into TMPDIR and returns (ffi, lib)."""
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-UNDEBUG"]
    if os.environ.get("FASTACTOR_SANITIZE") == "1":
        flags += [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined",
        ]
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "_fa_wal_harness",
        '#include "wal.h"',
        sources=[str(CSRC / "wal.c")],
        include_dirs=[str(CSRC)],
        extra_compile_args=flags,
        extra_link_args=["-pthread"] + [f for f in flags if f.startswith("-fsan")],
    )
    path = ffi.compile(tmpdir=str(tmpdir), verbose=False)
    spec = importlib.util.spec_from_file_location("_fa_wal_harness", path)
    assert spec is not None and spec.loader is not None
    mod: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


__all__ = ["build"]
