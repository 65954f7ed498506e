/*
 * metrics - counters and histograms of the running daemon, and their
 * Prometheus text exposition (format 0.0.4) for the admin /metrics.
 *
 * The hot path only increments fields of a struct metrics in place: no
 * allocation, no lock (a process runs one loop). With workers: N the
 * supervisor maps N of them in memory shared with the workers before it
 * forks (metrics_share); each worker counts into its own slot (one
 * writer per slot, so still no lock), and a scrape in worker 0 passes
 * all N to metrics_format(), which sums them. A reader may see a slot a
 * few increments behind its worker, never a half-written verdict row:
 * a row is published by a release store of n_rows. A restarted worker
 * goes on counting in its slot, so the sums never go down.
 *
 * Label sets are bounded: protocol_state is one of the states Postfix
 * sends (anything else counts as "other"); verdicts are counted per
 * (rule, verdict) in a table of METRICS_MAX_RULES rows, names copied in,
 * and anything past it counts as rule="other". Rule names come from the
 * operator's config, so the set follows the rules, not the traffic.
 *
 * What the daemon knows only at scrape time (connections open, config
 * generation, store state ...) is passed in a struct metrics_gauges.
 * metrics_format() returns a malloc'd NUL-terminated text the caller frees.
 */
#ifndef SMTPGUARD_METRICS_H
#define SMTPGUARD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum metrics_state {
    METRICS_STATE_CONNECT,
    METRICS_STATE_EHLO,
    METRICS_STATE_HELO,
    METRICS_STATE_MAIL,
    METRICS_STATE_RCPT,
    METRICS_STATE_DATA,
    METRICS_STATE_END_OF_MESSAGE,
    METRICS_STATE_VRFY,
    METRICS_STATE_ETRN,
    METRICS_STATE_OTHER,
    METRICS_STATE_COUNT
};

#define METRICS_BUCKETS 12          /* finite histogram bounds; +Inf is implied */
#define METRICS_MAX_RULES 256       /* (rule, verdict) rows */
#define METRICS_INDEX 512           /* slots of the row index; > 2 x METRICS_MAX_RULES, power of 2 */
#define METRICS_NAME_MAX 72         /* bytes of a rule name kept */
#define METRICS_VERDICT_MAX 16      /* bytes of a verdict word kept */

struct metrics_histogram {
    uint64_t buckets[METRICS_BUCKETS + 1]; /* observations per bucket (not cumulative); last = +Inf */
    double sum;                 /* seconds */
    uint64_t count;             /* observations */
};

struct metrics_verdict_row {
    char rule[METRICS_NAME_MAX];        /* rule name, "none", "on_error" or "other" */
    char verdict[METRICS_VERDICT_MAX];  /* "dunno", "reject" ... */
    uint64_t count;                     /* decisions */
};

struct metrics {
    uint64_t requests[METRICS_STATE_COUNT];  /* answered, by protocol_state */
    struct metrics_histogram answer;         /* request parsed -> answer ready, seconds */
    struct metrics_histogram store;          /* store round trip, seconds */
    uint64_t store_errors;                   /* round trips that failed or timed out */
    uint64_t script_calls;                   /* Redis script calls carrying applies */
    uint64_t script_requests;                /* applies those calls carried */
    uint64_t reloads;                        /* successful config reloads */
    uint64_t reload_failures;                /* config reloads a process refused itself */
    uint64_t reload_refusals;                /* refused before any worker saw them (workers: N):
                                              * by the supervisor, or by worker 0 for the admin API */
    uint64_t admin_requests;                 /* HTTP requests to the admin listener */
    uint64_t connections_accepted;           /* policy connections accepted */
    uint64_t connections_closed;             /* ... and closed (or lost with their worker) */
    struct metrics_verdict_row rows[METRICS_MAX_RULES]; /* verdicts by rule */
    size_t n_rows;                           /* rows in use */
    uint16_t index[METRICS_INDEX];           /* open-addressed: row + 1, 0 = empty */
    uint64_t verdicts_other;                 /* decisions past the row cap */
};

/* Scrape-time values. */
struct metrics_gauges {
    double start_time;          /* seconds since the epoch the daemon started */
    unsigned config_generation; /* 1 + reloads that took effect */
    bool store_up;              /* the store can answer */
    const char *store_backend;  /* "memory" or "redis" */
    long long store_keys;       /* keys in the memory store, -1 if unknown */
    long long store_evictions;  /* live keys the memory store dropped at its cap, -1 if unknown */
    const struct dns_stats *dns;        /* resolver counters, NULL without DNS checks */
    const struct alert_stats *alerts;   /* alert mail counters, NULL without alerts */
    long long tracked_open;     /* messages being tracked now, -1 without tracking */
};

struct dns_stats;
struct alert_stats;

/* What this process counts into: a static struct of its own, or its
 * slot of the shared ones in a worker. */
extern struct metrics *metrics_own;

/* metrics_share - in the supervisor of workers: N, before the first fork:
 * map n + 1 zeroed slots shared with the children, one per worker and
 * the last the supervisor's own (its refused reloads), which it counts
 * into from now on. 0, or -errno. */
int metrics_share(size_t n);

/* metrics_use_slot - in worker i, right after the fork: count into slot
 * i from now on. The connections its predecessor in the slot left open
 * died with it and are counted closed. */
void metrics_use_slot(size_t i);

/* metrics_parts - what a scrape sums: every worker's slot and the
 * supervisor's when shared, else metrics_own. Returns how many pointers it set (at most max). */
size_t metrics_parts(const struct metrics **parts, size_t max);

/* metrics_state_of - the label index for a protocol_state value. */
enum metrics_state metrics_state_of(const char *s, size_t len);
const char *metrics_state_name(enum metrics_state s);

/* metrics_observe - one observation of seconds. */
void metrics_observe(struct metrics_histogram *h, double seconds);

/* metrics_verdict - count one decision by rule (NULL = "none"). */
void metrics_verdict(struct metrics *m, const char *rule, const char *verdict);

/* metrics_format - the exposition text of the sum of parts[0..n). */
char *metrics_format(const struct metrics *const *parts, size_t n, const struct metrics_gauges *g);

/* The histogram's upper bounds, in seconds. */
extern const double metrics_bounds[METRICS_BUCKETS];

#endif
