/*
 * dnscache - see dnscache.h.
 *
 * Slots are one array (so handles are indices), chained into hash
 * buckets by index. A slot is FREE, PENDING (asked, waiters attached) or
 * DONE (answer kept until expires_ms). Eviction looks at a few slots
 * after a moving cursor and takes the one that expires first: bounded
 * work per miss, and roughly the least useful entry.
 */
#include "dnscache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define DNSCACHE_EVICT_SCAN 16      /* slots looked at per eviction */

enum dnscache_state {
    DNSCACHE_S_FREE,
    DNSCACHE_S_PENDING,
    DNSCACHE_S_DONE
};

struct dnscache_entry {
    uint32_t gen;               /* bumped whenever the slot changes hands */
    uint8_t state;              /* enum dnscache_state */
    bool pinned;                /* waiters are being called: not evictable */
    uint16_t type;              /* DNS_T_* */
    int32_t hnext;              /* next slot in the bucket (or free list), -1 */
    uint64_t expires_ms;        /* DONE: answer good until then */
    struct dnscache_waiter *waiters; /* PENDING: head of the waiter list */
    struct dns_rrset rr;        /* DONE: the answer */
    char name[DNSNAME_MAX + 1];
};

struct dnscache {
    struct dnscache_entry *slots;
    size_t max_entries;         /* slots allocated */
    size_t hwm;                 /* slots ever handed out */
    int32_t free_head;          /* freed slots, chained through hnext */
    int32_t *buckets;           /* heads, -1 = empty */
    size_t n_buckets;           /* a power of two */
    size_t cursor;              /* where eviction looks next */
    struct dnscache_ttl ttl;
    struct dnscache_stats stats;
};

static uint32_t dnscache_hash(uint16_t type, const char *name)
{
    uint32_t h = 2166136261u ^ type;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

struct dnscache *dnscache_new(size_t max_entries, const struct dnscache_ttl *ttl)
{
    struct dnscache *c = xcalloc(1, sizeof *c);
    if (max_entries < 1)
        max_entries = 1;
    c->max_entries = max_entries;
    c->slots = xcalloc(max_entries, sizeof *c->slots);
    c->n_buckets = 16;
    while (c->n_buckets < max_entries)
        c->n_buckets <<= 1;
    c->buckets = xmalloc(c->n_buckets * sizeof *c->buckets);
    for (size_t i = 0; i < c->n_buckets; i++)
        c->buckets[i] = -1;
    c->free_head = -1;
    c->ttl = *ttl;
    return c;
}

void dnscache_free(struct dnscache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->buckets);
    free(c);
}

static struct dnscache_entry *dnscache_slot(const struct dnscache *c, struct dnscache_ref ref)
{
    if (ref.slot >= c->hwm)
        return NULL;
    struct dnscache_entry *e = &c->slots[ref.slot];
    return e->gen == ref.gen && e->state != DNSCACHE_S_FREE ? e : NULL;
}

static void dnscache_unlink_hash(struct dnscache *c, size_t slot)
{
    struct dnscache_entry *e = &c->slots[slot];
    int32_t *p = &c->buckets[dnscache_hash(e->type, e->name) & (c->n_buckets - 1)];
    while (*p >= 0) {
        if ((size_t)*p == slot) {
            *p = e->hnext;
            return;
        }
        p = &c->slots[*p].hnext;
    }
}

/* dnscache_evict - free a DONE slot that expires first among a few;
 * returns its index or -1 when every slot looked at is busy. */
static long dnscache_evict(struct dnscache *c, uint64_t now_ms)
{
    long best = -1;
    for (size_t k = 0; k < DNSCACHE_EVICT_SCAN && k < c->hwm; k++) {
        size_t i = (c->cursor + k) % c->hwm;
        struct dnscache_entry *e = &c->slots[i];
        if (e->state != DNSCACHE_S_DONE || e->pinned)
            continue;
        if (best < 0 || e->expires_ms < c->slots[best].expires_ms)
            best = (long)i;
    }
    c->cursor = (c->cursor + DNSCACHE_EVICT_SCAN) % (c->hwm ? c->hwm : 1);
    if (best < 0)
        return -1;
    if (c->slots[best].expires_ms > now_ms)
        c->stats.evictions++;
    dnscache_unlink_hash(c, (size_t)best);
    c->slots[best].state = DNSCACHE_S_FREE;
    c->slots[best].gen++;
    c->stats.entries--;
    return best;
}

static long dnscache_take_slot(struct dnscache *c, uint64_t now_ms)
{
    if (c->free_head >= 0) {
        long s = c->free_head;
        c->free_head = c->slots[s].hnext;
        return s;
    }
    if (c->hwm < c->max_entries)
        return (long)c->hwm++;
    return dnscache_evict(c, now_ms);
}

/* Turn slot e into a fresh PENDING entry; old handles become stale. */
static void dnscache_pending(struct dnscache_entry *e)
{
    e->gen++;
    e->state = DNSCACHE_S_PENDING;
    e->pinned = false;
    e->waiters = NULL;
    e->expires_ms = 0;
    memset(&e->rr, 0, sizeof e->rr);
}

enum dnscache_result dnscache_lookup(struct dnscache *c, uint16_t type, const char *name,
                                     uint64_t now_ms, struct dnscache_ref *ref,
                                     const struct dns_rrset **rr)
{
    size_t nlen = strlen(name);
    if (nlen > DNSNAME_MAX)
        return DNSCACHE_FULL;
    uint32_t h = dnscache_hash(type, name) & (uint32_t)(c->n_buckets - 1);
    for (int32_t i = c->buckets[h]; i >= 0; i = c->slots[i].hnext) {
        struct dnscache_entry *e = &c->slots[i];
        if (e->type != type || strcmp(e->name, name) != 0)
            continue;
        ref->slot = (uint32_t)i;
        if (e->state == DNSCACHE_S_PENDING) {
            ref->gen = e->gen;
            c->stats.coalesced++;
            return DNSCACHE_PENDING;
        }
        if (e->expires_ms > now_ms || e->pinned) {
            ref->gen = e->gen;
            *rr = &e->rr;
            c->stats.hits++;
            return DNSCACHE_HIT;
        }
        /* Expired: ask again in the same slot. */
        dnscache_pending(e);
        ref->gen = e->gen;
        c->stats.misses++;
        return DNSCACHE_MISS;
    }
    long s = dnscache_take_slot(c, now_ms);
    if (s < 0)
        return DNSCACHE_FULL;
    struct dnscache_entry *e = &c->slots[s];
    dnscache_pending(e);
    e->type = type;
    memcpy(e->name, name, nlen + 1);
    e->hnext = c->buckets[h];
    c->buckets[h] = (int32_t)s;
    c->stats.entries++;
    c->stats.misses++;
    ref->slot = (uint32_t)s;
    ref->gen = e->gen;
    return DNSCACHE_MISS;
}

int dnscache_wait(struct dnscache *c, struct dnscache_ref ref, struct dnscache_waiter *w)
{
    struct dnscache_entry *e = dnscache_slot(c, ref);
    if (!e || e->state != DNSCACHE_S_PENDING)
        return -ESTALE;
    w->ref = ref;
    w->prev = NULL;
    w->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = w;
    e->waiters = w;
    w->linked = true;
    return 0;
}

void dnscache_unwait(struct dnscache *c, struct dnscache_waiter *w)
{
    if (!w->linked)
        return;
    w->linked = false;
    struct dnscache_entry *e = dnscache_slot(c, w->ref);
    if (!e) /* cannot happen while linked; never touch a recycled slot */
        return;
    if (w->prev)
        w->prev->next = w->next;
    else if (e->waiters == w)
        e->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

static uint64_t dnscache_clamp(const struct dnscache *c, int64_t ttl_s, enum dns_status st)
{
    if (ttl_s < 0)
        ttl_s = st == DNS_NOTFOUND ? c->ttl.negative_s : c->ttl.floor_s;
    if (ttl_s < (int64_t)c->ttl.floor_s)
        ttl_s = c->ttl.floor_s;
    if (ttl_s > (int64_t)c->ttl.ceiling_s)
        ttl_s = c->ttl.ceiling_s;
    return (uint64_t)ttl_s * 1000u;
}

bool dnscache_complete(struct dnscache *c, struct dnscache_ref ref, const struct dns_rrset *rr,
                       int64_t ttl_s, uint64_t now_ms)
{
    struct dnscache_entry *e = dnscache_slot(c, ref);
    if (!e || e->state != DNSCACHE_S_PENDING)
        return false;
    e->rr = *rr;
    e->state = DNSCACHE_S_DONE;
    /* A failure is not kept: the next lookup asks again. */
    e->expires_ms = rr->status == DNS_TEMPFAIL ? now_ms : now_ms + dnscache_clamp(c, ttl_s, rr->status);
    /* Call the waiters one by one from the head: a callback may start
     * other lookups (pinned keeps this entry from being evicted under
     * us) or cancel other waiters of this list (they unlink normally). */
    e->pinned = true;
    while (e->waiters) {
        struct dnscache_waiter *w = e->waiters;
        e->waiters = w->next;
        if (e->waiters)
            e->waiters->prev = NULL;
        w->next = w->prev = NULL;
        w->linked = false;
        w->cb(w, &e->rr);
    }
    e->pinned = false;
    return true;
}

const struct dns_rrset *dnscache_get(const struct dnscache *c, struct dnscache_ref ref)
{
    const struct dnscache_entry *e = dnscache_slot(c, ref);
    return e && e->state == DNSCACHE_S_DONE ? &e->rr : NULL;
}

void dnscache_stats_get(const struct dnscache *c, struct dnscache_stats *out)
{
    *out = c->stats;
}
