/*
 * dns - DNS questions through c-ares inside the libuv loop, with the
 * cache of dnscache.c, and deadlines for the requests that wait.
 *
 * c-ares tells which sockets it wants watched (ARES_OPT_SOCK_STATE_CB);
 * each gets a uv_poll that feeds ares_process_fd, and one uv_timer
 * follows ares_timeout(). Nothing here blocks.
 *
 * dns_ask() answers from the cache at once (DNS_ASK_DONE, *rr valid
 * until the next dns call), joins a question in flight, or asks it
 * (DNS_ASK_PENDING: w->cb runs exactly once, later, from the loop, unless
 * the caller dns_cancel()s it first). A question that cannot be asked
 * (cap on queries in flight reached, cache full) is DONE with a TEMPFAIL
 * answer. A single c-ares query cannot be cancelled: an abandoned one
 * runs to its end and its answer fills the cache for the next request.
 *
 * A job is a request's deadline: dns_job_start() arms it, its callback
 * runs exactly once, from the loop, when the deadline passes, unless
 * dns_job_stop() came first. Every job has the same timeout, so jobs
 * sit in one FIFO list behind one timer.
 *
 * The caller owns its waiters and jobs (embedded in the request) and
 * must cancel/stop them before reusing them. dns_close() runs every
 * job's callback at once (the caller then cancels its waiters), destroys
 * the channel (c-ares calls pending queries back with ARES_EDESTRUCTION,
 * a normal path) and frees itself when its handles are closed.
 */
#ifndef SMTPGUARD_DNS_H
#define SMTPGUARD_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dnscache.h"

#define DNS_MAX_SERVERS 8
#define DNS_MAX_ZONE_STATS 64       /* zones counted in dns_stats */

struct dns_config {
    char *servers[DNS_MAX_SERVERS]; /* "IP", "IP:port", "[v6]:port"; none = /etc/resolv.conf */
    size_t n_servers;
    unsigned timeout_ms;        /* a request waits this long for its checks */
    unsigned tries;             /* c-ares attempts per server within that time */
    uint32_t ttl_floor_s;       /* answers are kept at least this long */
    uint32_t ttl_ceiling_s;     /* and at most this long */
    uint32_t negative_ttl_s;    /* a negative answer without SOA */
    size_t cache_size;          /* answers kept at most */
    unsigned max_inflight;      /* queries out at once; more are TEMPFAIL */
    char *country_zone;         /* default zone of `country:` conditions, or NULL */
};

void dns_config_defaults(struct dns_config *cfg);
void dns_config_fini(struct dns_config *cfg);
/* dns_config_equal - same resolver settings (reload keeps the resolver). */
bool dns_config_equal(const struct dns_config *a, const struct dns_config *b);

struct dns;
struct dns_job;

typedef void (*dns_job_cb)(struct dns_job *job, void *arg);

struct dns_job {
    struct dns_job *prev, *next; /* in the resolver's FIFO */
    uint64_t deadline_ms;       /* loop time */
    bool active;                /* started and not yet stopped or fired */
    dns_job_cb cb;
    void *arg;
};

enum dns_ask_result {
    DNS_ASK_DONE,               /* *rr is the answer now */
    DNS_ASK_PENDING             /* w->cb will be called */
};

/* Counters for metrics; see dns_stats_get. */
struct dns_zone_stat {
    const char *zone;           /* owned by the resolver */
    unsigned long long hits;    /* requests this zone listed */
};

struct dns_stats {
    unsigned long long queries;     /* questions sent to DNS servers */
    unsigned long long answers;     /* of them answered (found or not) */
    unsigned long long errors;      /* SERVFAIL, refused, c-ares timeout */
    unsigned long long cache_hits;  /* questions answered from the cache */
    unsigned long long coalesced;   /* questions that joined one in flight */
    unsigned long long timeouts;    /* questions unanswered at their request's deadline */
    unsigned long long dropped;     /* questions not asked: cap reached */
    unsigned inflight;              /* queries out now */
    size_t cached;                  /* cache entries now */
    size_t n_zones;
    struct dns_zone_stat zones[DNS_MAX_ZONE_STATS];
};

/* dns_stats_carry - a reload's new resolver takes over the old one's
 * counters (and zone hits), so that /metrics counters never go down. */
void dns_stats_carry(struct dns *into, const struct dns *from);

/* dns_open - a resolver on loop. Returns 0 or a negative errno with err. */
int dns_open(struct dns **out, const struct dns_config *cfg, uv_loop_t *loop, char *err,
             size_t errlen);
void dns_close(struct dns *d);

/* dns_retire - a reload replaced d: the requests that asked it keep it
 * until their checks are answered or their deadline passes (they finish
 * on the rules and resolver they started with), then it closes itself.
 * New requests must use its successor. */
void dns_retire(struct dns *d);

/* dns_close_retired - at stop: close every retiring resolver now (their
 * requests get their deadline at once, as dns_close gives them). */
void dns_close_retired(void);

enum dns_ask_result dns_ask(struct dns *d, struct dnscache_waiter *w, uint16_t type,
                            const char *name, const struct dns_rrset **rr);
/* dns_cancel - w will not be called (safe if it was called already). */
void dns_cancel(struct dns *d, struct dnscache_waiter *w);

void dns_job_start(struct dns *d, struct dns_job *job, dns_job_cb cb, void *arg);
void dns_job_stop(struct dns *d, struct dns_job *job);

/* dns_zone_hit - count a listing by zone (for metrics). */
void dns_zone_hit(struct dns *d, const char *zone);
/* dns_timeout_note - count (and log, rate-limited) a request whose
 * checks were cut by the deadline. */
void dns_timeout_note(struct dns *d, const char *what);

void dns_stats_get(const struct dns *d, struct dns_stats *out);
/* dns_stats_log - one info line with the counters (at stop, for tests). */
void dns_stats_log(const struct dns *d);

/* The resolver's clock for the cache, in ms; injectable for tests. */
extern uint64_t (*dns_clock_ms)(uv_loop_t *loop);

#endif
