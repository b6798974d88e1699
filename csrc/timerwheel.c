/*
 * timerwheel.c -- the hierarchical timing wheel described in timerwheel.h.
 */
#include "timerwheel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX
#define LIST_DUE (FA_WHEEL_LEVELS * FA_WHEEL_SLOTS)
#define N_LISTS (LIST_DUE + 1)
#define LIST_FREE UINT16_MAX
#define SLOT_MASK ((uint64_t)FA_WHEEL_SLOTS - 1)

typedef struct {
    uint64_t when;
    uint64_t data;
    uint32_t next;
    uint32_t prev;
    uint32_t gen;
    uint16_t list; /* level * 64 + slot, LIST_DUE, or LIST_FREE */
    uint16_t pad;
} node;

_Static_assert(sizeof(node) == 32, "a timer node is 32 bytes");

struct fa_wheel {
    uint64_t now;
    node *nodes;
    uint32_t cap;
    uint32_t used;      /* nodes[0..used) have been handed out at least once */
    uint32_t free_head; /* freed nodes, linked by next */
    size_t count;
    uint64_t occupied[FA_WHEEL_LEVELS];
    uint32_t head[N_LISTS];
    uint32_t tail[N_LISTS];
};

static inline unsigned
digit(uint64_t t, unsigned level)
{
    return (unsigned)((t >> (level * FA_WHEEL_BITS)) & SLOT_MASK);
}

static void
link_tail(fa_wheel *w, uint32_t i, unsigned list)
{
    node *n = &w->nodes[i];
    n->list = (uint16_t)list;
    n->next = NIL;
    n->prev = w->tail[list];
    if (w->tail[list] == NIL)
        w->head[list] = i;
    else
        w->nodes[w->tail[list]].next = i;
    w->tail[list] = i;
    if (list < LIST_DUE)
        w->occupied[list / FA_WHEEL_SLOTS] |= UINT64_C(1) << (list % FA_WHEEL_SLOTS);
}

static void
unlink_node(fa_wheel *w, uint32_t i)
{
    node *n = &w->nodes[i];
    unsigned list = n->list;
    if (n->prev == NIL)
        w->head[list] = n->next;
    else
        w->nodes[n->prev].next = n->next;
    if (n->next == NIL)
        w->tail[list] = n->prev;
    else
        w->nodes[n->next].prev = n->prev;
    if (list < LIST_DUE && w->head[list] == NIL)
        w->occupied[list / FA_WHEEL_SLOTS] &= ~(UINT64_C(1) << (list % FA_WHEEL_SLOTS));
}

/* Files node I under the current clock: the due list, or the level of the highest digit
 * in which its time differs from now. */
static void
place(fa_wheel *w, uint32_t i)
{
    uint64_t when = w->nodes[i].when;
    if (when <= w->now) {
        link_tail(w, i, LIST_DUE);
        return;
    }
    unsigned level = (unsigned)(63 - __builtin_clzll(when ^ w->now)) / FA_WHEEL_BITS;
    link_tail(w, i, level * FA_WHEEL_SLOTS + digit(when, level));
}

static void
release(fa_wheel *w, uint32_t i)
{
    node *n = &w->nodes[i];
    n->list = LIST_FREE;
    n->gen++;
    n->next = w->free_head;
    w->free_head = i;
    w->count--;
}

fa_wheel *
fa_wheel_new(uint64_t now)
{
    fa_wheel *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->now = now;
    w->free_head = NIL;
    for (unsigned i = 0; i < N_LISTS; i++)
        w->head[i] = w->tail[i] = NIL;
    return w;
}

void
fa_wheel_free(fa_wheel *w)
{
    if (w == NULL)
        return;
    free(w->nodes);
    free(w);
}

static int
grow(fa_wheel *w)
{
    uint64_t cap = w->cap < 64 ? 64 : (uint64_t)w->cap + w->cap / 2;
    if (cap > NIL - 1)
        cap = NIL - 1;
    if (cap <= w->cap) {
        errno = ENOMEM;
        return -1;
    }
    node *nodes = realloc(w->nodes, (size_t)cap * sizeof *nodes);
    if (nodes == NULL)
        return -1;
    w->nodes = nodes;
    w->cap = (uint32_t)cap;
    return 0;
}

int
fa_wheel_add(fa_wheel *w, uint64_t when, uint64_t data, uint64_t *handle)
{
    uint32_t i;
    if (when > FA_WHEEL_MAX_TIME) {
        errno = EINVAL;
        return -1;
    }
    if (w->free_head != NIL) {
        i = w->free_head;
        w->free_head = w->nodes[i].next;
    } else {
        if (w->used == w->cap && grow(w) != 0)
            return -1;
        i = w->used++;
        w->nodes[i].gen = 0;
    }
    node *n = &w->nodes[i];
    n->when = when;
    n->data = data;
    n->pad = 0;
    place(w, i);
    w->count++;
    *handle = ((uint64_t)n->gen << 32) | i;
    return 0;
}

int
fa_wheel_cancel(fa_wheel *w, uint64_t handle, uint64_t *data)
{
    uint32_t i = (uint32_t)handle;
    if (i >= w->used)
        return -1;
    node *n = &w->nodes[i];
    if (n->list == LIST_FREE || n->gen != (uint32_t)(handle >> 32))
        return -1;
    if (data != NULL)
        *data = n->data;
    unlink_node(w, i);
    release(w, i);
    return 0;
}

/* The next event after now: an expiry (level 0) or a cascade (higher levels), and its
 * level in *LEVEL; FA_WHEEL_NONE when no slot is occupied. */
static uint64_t
next_event(const fa_wheel *w, unsigned *level)
{
    for (unsigned l = 0; l < FA_WHEEL_LEVELS; l++) {
        uint64_t mask = w->occupied[l];
        if (mask == 0)
            continue;
        /* Occupied slots all lie past now's digit (see the header); mask it anyway. */
        unsigned d = digit(w->now, l);
        mask &= d == SLOT_MASK ? 0 : ~UINT64_C(0) << (d + 1);
        if (mask == 0)
            continue;
        unsigned shift = l * FA_WHEEL_BITS;
        uint64_t above = shift + FA_WHEEL_BITS >= 64
                             ? 0
                             : (w->now >> (shift + FA_WHEEL_BITS)) << (shift + FA_WHEEL_BITS);
        *level = l;
        return above | ((uint64_t)__builtin_ctzll(mask) << shift);
    }
    return FA_WHEEL_NONE;
}

uint64_t
fa_wheel_next(const fa_wheel *w)
{
    unsigned level;
    if (w->head[LIST_DUE] != NIL)
        return w->now;
    return next_event(w, &level);
}

static size_t
take_due(fa_wheel *w, uint64_t *out, size_t max)
{
    size_t n = 0;
    while (n < max && w->head[LIST_DUE] != NIL) {
        uint32_t i = w->head[LIST_DUE];
        out[n++] = w->nodes[i].data;
        unlink_node(w, i);
        release(w, i);
    }
    return n;
}

size_t
fa_wheel_advance(fa_wheel *w, uint64_t target, uint64_t *out, size_t max)
{
    size_t n = take_due(w, out, max);
    while (n < max) {
        unsigned level;
        uint64_t t = next_event(w, &level);
        if (t == FA_WHEEL_NONE || t > target)
            break;
        w->now = t;
        unsigned list = level * FA_WHEEL_SLOTS + digit(t, level);
        /* Detach the slot, then file each timer again under the new clock: a level-0 slot
         * is all due now; a higher one spreads over the levels below. */
        uint32_t i = w->head[list];
        w->head[list] = w->tail[list] = NIL;
        w->occupied[level] &= ~(UINT64_C(1) << digit(t, level));
        while (i != NIL) {
            uint32_t next = w->nodes[i].next;
            place(w, i);
            i = next;
        }
        n += take_due(w, out + n, max - n);
    }
    if (n < max && target > w->now)
        w->now = target;
    return n;
}

uint64_t
fa_wheel_now(const fa_wheel *w)
{
    return w->now;
}

size_t
fa_wheel_count(const fa_wheel *w)
{
    return w->count;
}

size_t
fa_wheel_memory(const fa_wheel *w)
{
    return sizeof *w + (size_t)w->cap * sizeof(node);
}
