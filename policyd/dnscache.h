/*
 * dnscache - answers by question (type, name), kept for their TTL, and
 * the waiters of questions still in flight.
 *
 * A question is asked once however many requests want it at the same
 * time: the first lookup creates a PENDING entry and tells its caller to
 * ask (MISS); later ones join as waiters (PENDING); dnscache_complete()
 * stores the answer and calls every waiter. A DONE entry answers lookups
 * (HIT) until it expires: its TTL is clamped to [floor, ceiling]; a
 * negative answer without a TTL of its own lives negative_ttl (clamped
 * too); a failure (TEMPFAIL) is not kept at all.
 *
 * Handles, not pointers: entries live in slots, and whoever refers to an
 * entry across loop turns (the query in flight, a waiter) holds a struct
 * dnscache_ref (slot, generation). The generation changes whenever the
 * slot is reused, so a late answer for an entry that is gone, or a
 * waiter cancelled after its entry was recycled, is recognised and
 * ignored instead of touching someone else's entry. The entry points to
 * its waiters (the caller's memory): a caller must dnscache_unwait()
 * every waiter it abandons before freeing it; waiters that were called
 * are already unlinked.
 *
 * Memory: a fixed number of slots (max_entries) allocated on first use;
 * when full, the oldest-expiring DONE entry among a few looked at is
 * evicted (bounded work); PENDING entries are never evicted (the caller
 * caps queries in flight below max_entries).
 * Time is passed in (now_ms) by the caller: tests drive the clock.
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_DNSCACHE_H
#define SMTPGUARD_DNSCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dnsname.h"

struct dnscache_ref {
    uint32_t slot;              /* index into the slot array */
    uint32_t gen;               /* the slot's generation when taken */
};

struct dnscache_waiter;
typedef void (*dnscache_cb)(struct dnscache_waiter *w, const struct dns_rrset *rr);

/* Embedded by the caller; valid from dnscache_wait until called or unwaited. */
struct dnscache_waiter {
    struct dnscache_ref ref;    /* the entry waited on */
    struct dnscache_waiter *prev, *next; /* in the entry's waiter list */
    bool linked;                /* in a list now */
    dnscache_cb cb;             /* called once with the answer (rr valid during the call) */
    void *arg;                  /* the caller's */
    unsigned idx;               /* the caller's */
};

struct dnscache_ttl {
    uint32_t floor_s;           /* seconds an answer is kept at least */
    uint32_t ceiling_s;         /* seconds at most */
    uint32_t negative_s;        /* a negative answer that carries no SOA */
};

struct dnscache_stats {
    unsigned long long hits;        /* lookups answered from the cache */
    unsigned long long misses;      /* lookups that had to ask */
    unsigned long long coalesced;   /* lookups that joined a question in flight */
    unsigned long long evictions;   /* unexpired answers dropped for room */
    size_t entries;                 /* slots in use */
};

enum dnscache_result {
    DNSCACHE_HIT,               /* *rr holds the answer (valid until the next cache call) */
    DNSCACHE_PENDING,           /* asked already: wait on *ref */
    DNSCACHE_MISS,              /* not known: ask, then complete *ref */
    DNSCACHE_FULL               /* no free slot: treat as a failure */
};

struct dnscache;

struct dnscache *dnscache_new(size_t max_entries, const struct dnscache_ttl *ttl);
/* dnscache_free - every waiter must be gone. */
void dnscache_free(struct dnscache *c);

enum dnscache_result dnscache_lookup(struct dnscache *c, uint16_t type, const char *name,
                                     uint64_t now_ms, struct dnscache_ref *ref,
                                     const struct dns_rrset **rr);

/* dnscache_wait - attach w to the PENDING entry ref; -ESTALE if it is
 * not pending any more (then dnscache_get tells the answer). */
int dnscache_wait(struct dnscache *c, struct dnscache_ref ref, struct dnscache_waiter *w);

/* dnscache_unwait - detach w if still attached (safe to call twice, and
 * after its entry was recycled). */
void dnscache_unwait(struct dnscache *c, struct dnscache_waiter *w);

/* dnscache_complete - the answer to ref; ttl_s is the answer's own TTL
 * or -1 if it had none. Calls the waiters (each unlinked first). Returns
 * false, doing nothing, when ref is stale (a late answer). */
bool dnscache_complete(struct dnscache *c, struct dnscache_ref ref, const struct dns_rrset *rr,
                       int64_t ttl_s, uint64_t now_ms);

/* dnscache_get - the answer of a DONE entry, or NULL if ref is stale or
 * still pending. */
const struct dns_rrset *dnscache_get(const struct dnscache *c, struct dnscache_ref ref);

void dnscache_stats_get(const struct dnscache *c, struct dnscache_stats *out);

#endif
