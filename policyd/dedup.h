/*
 * dedup - at most one alert per (rule, key) per interval, and a count of
 * the alerts that interval swallowed.
 *
 * The bookkeeping of one process. With a shared Redis the process asks
 * Redis (SET NX EX, see alert.c) whether this host wins the interval;
 * this table keeps every other trip of a flood local, so a flood costs
 * one Redis round trip per interval and key, not one per request:
 *
 *   dedup_trip()   SUPPRESS: inside a known interval (or a question is
 *                  out): counted, nothing else to do.
 *                  PROCEED: the interval is over (or never began): the
 *                  caller decides, handing over the trips counted so far.
 *   dedup_settle() the decision: the interval runs until `until`; won
 *                  or not, the next trips are suppressed until then.
 *
 * Entries are keyed by an id string (rule NUL key); their number is
 * capped: past the cap the least recently used entry is dropped (its
 * pending count is lost, which at worst sends one alert early).
 * Pure: no I/O; the caller passes the time.
 */
#ifndef SMTPGUARD_DEDUP_H
#define SMTPGUARD_DEDUP_H

#include <stddef.h>

enum dedup_result {
    DEDUP_SUPPRESS,
    DEDUP_PROCEED
};

struct dedup;

struct dedup *dedup_new(size_t max_entries);
void dedup_free(struct dedup *d);

/* dedup_trip - one trip of id at now. On PROCEED, *handover is the
 * number of trips suppressed since the last hand-over (now zeroed). */
enum dedup_result dedup_trip(struct dedup *d, const char *id, size_t len, double now,
                             unsigned long *handover);

/* dedup_settle - end the question of id: suppress until until. */
void dedup_settle(struct dedup *d, const char *id, size_t len, double until);

/* dedup_drain - hand the trips suppressed since the last hand-over to
 * fn (with a shared Redis they are added to the count every host sees),
 * at most max entries; returns how many. Those counts are not handed
 * over by dedup_trip again. */
typedef void (*dedup_drain_fn)(void *arg, const char *id, size_t len, unsigned long pending);
size_t dedup_drain(struct dedup *d, dedup_drain_fn fn, void *arg, size_t max);

/* dedup_count - entries held (tests). */
size_t dedup_count(const struct dedup *d);

#endif
