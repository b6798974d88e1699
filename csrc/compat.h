/*
 * compat.h -- small portability layer shared by the C sources of fastactor.
 */
#ifndef FA_COMPAT_H
#define FA_COMPAT_H

#include <assert.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#if defined(__GNUC__) || defined(__clang__)
#define FA_LIKELY(x)   __builtin_expect(!!(x), 1)
#define FA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define FA_LIKELY(x)   (x)
#define FA_UNLIKELY(x) (x)
#endif

/* fdatasync where the platform has it; macOS needs F_FULLFSYNC to reach the medium. */
static inline int
fa_fdatasync(int fd)
{
#if defined(__APPLE__)
    return fcntl(fd, F_FULLFSYNC);
#elif defined(__linux__)
    return fdatasync(fd);
#else
    return fsync(fd);
#endif
}

/* Little-endian loads and stores: the on-disk format is little-endian on every host,
 * and going through bytes keeps unaligned access defined. */
static inline void
fa_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void
fa_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void
fa_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t
fa_get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t
fa_get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t
fa_get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#endif /* FA_COMPAT_H */
