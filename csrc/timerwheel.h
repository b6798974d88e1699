/*
 * timerwheel.h -- a hierarchical timing wheel with millisecond resolution, for alarms.
 *
 * DESIGN
 *
 * Time is an unsigned 64-bit count of milliseconds (fastactor uses milliseconds since the
 * Unix epoch). The wheel has FA_WHEEL_LEVELS levels of 64 slots; level L covers times whose
 * base-64 digits above L equal those of `now`, so a slot of level L is 64^L ms wide and the
 * eight levels together reach 2^48 ms (about 8,900 years) past any `now`.
 *
 * A timer due at `when` > `now` goes to the level of the highest base-64 digit in which
 * `when` and `now` differ, into the slot named by `when`'s digit at that level. Its digits
 * above that level equal `now`'s, and its digit at that level is greater than `now`'s: so
 * every occupied slot of a level lies ahead of `now`'s digit there, and level 0 slots hold
 * timers due exactly at that millisecond. A timer due at or before `now` goes straight to
 * the due list.
 *
 * Advancing to `target` never visits empty time. A 64-bit occupancy mask per level gives
 * the next event: the first occupied slot past `now`'s digit on the lowest level that has
 * one (every event of level L comes before every event of level L + 1). On level 0 the
 * event is an expiry: the slot's timers move to the due list. On a higher level the event
 * is a cascade at the slot's start time: its timers are inserted again relative to the new
 * `now`, landing on lower levels (or on the due list). Each timer cascades at most
 * FA_WHEEL_LEVELS - 1 times, so insert, cancel and expiry are O(1) amortised, and
 * fa_wheel_next (the time to arm the event loop's one timer for) is O(levels).
 *
 * Timers live in one array of 32-byte nodes, linked into doubly-linked slot lists by 32-bit
 * index, so cancel is O(1) by handle. A handle is (generation << 32 | index): the slot's
 * generation changes whenever the node is freed, so a stale handle is refused rather than
 * cancelling a stranger. The array grows by half when full (so at most 48 bytes per live
 * timer, plus the 4 KiB of slot heads and masks); freed nodes are reused first.
 *
 * Not thread-safe: one wheel belongs to one event loop.
 */
#ifndef FA_TIMERWHEEL_H
#define FA_TIMERWHEEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FA_WHEEL_LEVELS 8
#define FA_WHEEL_BITS 6
#define FA_WHEEL_SLOTS (1u << FA_WHEEL_BITS)
/* The latest time a timer may be due: 2^48 - 1 ms. */
#define FA_WHEEL_MAX_TIME ((UINT64_C(1) << (FA_WHEEL_LEVELS * FA_WHEEL_BITS)) - 1)
#define FA_WHEEL_NONE UINT64_MAX

typedef struct fa_wheel fa_wheel;

/* A new empty wheel whose clock reads NOW; NULL when out of memory (errno set). */
fa_wheel *fa_wheel_new(uint64_t now);
void fa_wheel_free(fa_wheel *w);

/* Adds a timer due at WHEN carrying DATA; stores its handle in *HANDLE. Returns 0, or -1
 * with errno EINVAL (WHEN > FA_WHEEL_MAX_TIME) or ENOMEM (nothing changed either way). */
int fa_wheel_add(fa_wheel *w, uint64_t when, uint64_t data, uint64_t *handle);

/* Cancels the timer HANDLE names; stores its data in *DATA if DATA is not NULL. Returns 0,
 * or -1 when HANDLE names no pending timer (fired, cancelled, or never issued). */
int fa_wheel_cancel(fa_wheel *w, uint64_t handle, uint64_t *data);

/* When the next timer may be due: exact when it is on level 0 or the due list, else the
 * start of the slot it will cascade from (a lower bound). FA_WHEEL_NONE when empty. */
uint64_t fa_wheel_next(const fa_wheel *w);

/* Moves the clock to TARGET (never backwards) and takes up to MAX due timers, storing their
 * data in OUT: in due-time order, except that timers added when already due come in the
 * order they were added. Returns how many were taken; when that is MAX, more
 * may be due: call again with the same TARGET. */
size_t fa_wheel_advance(fa_wheel *w, uint64_t target, uint64_t *out, size_t max);

uint64_t fa_wheel_now(const fa_wheel *w);
size_t fa_wheel_count(const fa_wheel *w);
/* Bytes the wheel holds in memory (node array and slot heads). */
size_t fa_wheel_memory(const fa_wheel *w);

#ifdef __cplusplus
}
#endif
#endif
