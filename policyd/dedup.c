/*
 * dedup - see dedup.h. A chained hash of entries on a list ordered by
 * last use; expired entries are dropped from the head of that list as
 * trips come by (bounded work per trip), and the cap drops the head.
 */
#include "dedup.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define DEDUP_SWEEP 8               /* expired entries dropped per trip at most */

struct dedup_entry {
    struct dedup_entry *hnext;  /* hash chain */
    struct dedup_entry *prev, *next; /* least recently used first */
    struct dedup_entry *dprev, *dnext; /* on the dirty list: pending > 0 */
    bool dirty;
    char *id;
    size_t len;                 /* bytes of id */
    double until;               /* seconds: trips before this are suppressed */
    unsigned long pending;      /* trips suppressed, not yet handed over */
    bool asking;                /* PROCEED given, not yet settled */
};

struct dedup {
    struct dedup_entry **buckets;
    size_t n_buckets;           /* power of two */
    struct dedup_entry *head, *tail;
    struct dedup_entry *dirty;  /* entries with pending trips, for dedup_drain */
    size_t n;
    size_t max;
};

static uint32_t dedup_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

struct dedup *dedup_new(size_t max_entries)
{
    struct dedup *d = xcalloc(1, sizeof *d);
    d->max = max_entries ? max_entries : 1;
    d->n_buckets = 64;
    while (d->n_buckets < d->max && d->n_buckets < ((size_t)1 << 20))
        d->n_buckets *= 2;
    d->buckets = xcalloc(d->n_buckets, sizeof *d->buckets);
    return d;
}

void dedup_free(struct dedup *d)
{
    if (!d)
        return;
    for (struct dedup_entry *e = d->head, *next; e; e = next) {
        next = e->next;
        free(e->id);
        free(e);
    }
    free(d->buckets);
    free(d);
}

static void dedup_unlist(struct dedup *d, struct dedup_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        d->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        d->tail = e->prev;
    e->prev = e->next = NULL;
}

static void dedup_list(struct dedup *d, struct dedup_entry *e)
{
    e->prev = d->tail;
    e->next = NULL;
    if (d->tail)
        d->tail->next = e;
    else
        d->head = e;
    d->tail = e;
}

static void dedup_clean(struct dedup *d, struct dedup_entry *e)
{
    if (!e->dirty)
        return;
    if (e->dprev)
        e->dprev->dnext = e->dnext;
    else
        d->dirty = e->dnext;
    if (e->dnext)
        e->dnext->dprev = e->dprev;
    e->dprev = e->dnext = NULL;
    e->dirty = false;
}

static void dedup_drop(struct dedup *d, struct dedup_entry *e)
{
    dedup_clean(d, e);
    struct dedup_entry **pp = &d->buckets[dedup_hash(e->id, e->len) & (d->n_buckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    dedup_unlist(d, e);
    d->n--;
    free(e->id);
    free(e);
}

static struct dedup_entry *dedup_find(struct dedup *d, const char *id, size_t len)
{
    struct dedup_entry *e = d->buckets[dedup_hash(id, len) & (d->n_buckets - 1)];
    while (e && (e->len != len || memcmp(e->id, id, len) != 0))
        e = e->hnext;
    return e;
}

enum dedup_result dedup_trip(struct dedup *d, const char *id, size_t len, double now,
                             unsigned long *handover)
{
    /* Entries whose interval ended with nothing pending are forgotten.
     * One that ended with trips still to hand over (or a question out)
     * goes to the back rather than stop the sweep at the head: with the
     * memory store nothing drains it until its key trips again, and the
     * expired entries behind it were kept for good (up to the cap). */
    for (int i = 0; i < DEDUP_SWEEP && d->head && d->head->until <= now; i++) {
        struct dedup_entry *h = d->head;
        if (h->asking || h->pending > 0) {
            if (h == d->tail)
                break;
            dedup_unlist(d, h);
            dedup_list(d, h);
            continue;
        }
        dedup_drop(d, h);
    }

    struct dedup_entry *e = dedup_find(d, id, len);
    if (e && (e->asking || now < e->until)) {
        e->pending++;
        if (!e->dirty) {
            e->dirty = true;
            e->dprev = NULL;
            e->dnext = d->dirty;
            if (d->dirty)
                d->dirty->dprev = e;
            d->dirty = e;
        }
        dedup_unlist(d, e);
        dedup_list(d, e);
        return DEDUP_SUPPRESS;
    }
    if (!e) {
        if (d->n >= d->max)
            dedup_drop(d, d->head);
        e = xcalloc(1, sizeof *e);
        e->id = xmalloc(len ? len : 1);
        memcpy(e->id, id, len);
        e->len = len;
        size_t b = dedup_hash(id, len) & (d->n_buckets - 1);
        e->hnext = d->buckets[b];
        d->buckets[b] = e;
        d->n++;
    } else {
        dedup_unlist(d, e);
    }
    dedup_list(d, e);
    *handover = e->pending;
    e->pending = 0;
    dedup_clean(d, e);
    e->asking = true;
    return DEDUP_PROCEED;
}

void dedup_settle(struct dedup *d, const char *id, size_t len, double until)
{
    struct dedup_entry *e = dedup_find(d, id, len);
    if (!e)
        return; /* dropped at the cap meanwhile */
    e->asking = false;
    e->until = until;
}

size_t dedup_drain(struct dedup *d, dedup_drain_fn fn, void *arg, size_t max)
{
    size_t n = 0;
    while (d->dirty && n < max) {
        struct dedup_entry *e = d->dirty;
        dedup_clean(d, e);
        fn(arg, e->id, e->len, e->pending);
        e->pending = 0;
        n++;
    }
    return n;
}

size_t dedup_count(const struct dedup *d)
{
    return d->n;
}
