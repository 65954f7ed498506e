/*
 * store - where counters live: one interface, two backends.
 *
 *   store_memory.c  the embedded default: a hash in this process, a cap
 *                   on keys, expired keys swept incrementally.
 *   store_redis.c   Redis shared by every MTA: all updates of one request
 *                   in one EVALSHA of store_redis.lua, time from Redis
 *                   TIME, keys expire when their score has decayed away.
 *
 * Besides counting (apply) and resetting, a store can be read without
 * changing anything (peek: explain and the admin API use it), and it keeps
 * a bounded set of its highest recent scores so that the top keys of a
 * counter are cheap to list (top): a key enters the set only when an
 * update leaves it at or above top_floor, the set holds about top_size
 * keys per counter (Redis: a sorted set per counter, trimmed to top_size
 * once it holds 128 more; memory: one pool of top_size x
 * STORE_TOP_POOL_FACTOR keys), and a query decays the members
 * to now, drops those expired or now below the floor, and sorts. Never a
 * keyspace scan. The floor compares unrounded scores.
 *
 * A backend is a const struct store_ops chosen by name (OpenSMTPD's
 * table_* shape); callers hold an opaque struct store.
 *
 * Guarantees to callers:
 * - every callback runs exactly once, and never from inside the call that
 *   started the work (the memory store completes from a uv_check), so a
 *   caller may start work while holding state it changes afterwards;
 * - a failure is STORE_TEMPFAIL, never a score of 0: the caller answers
 *   with the configured on_error verdict;
 * - the redis backend answers within timeout_ms (TEMPFAIL after that, a
 *   late reply is dropped); store_close() fails what is pending with
 *   TEMPFAIL, deferred as well.
 * - apply and reset consume their arguments during the call: the caller
 *   may reuse the update array and the key memory as soon as it returns;
 * Scores passed to a callback are valid only during the callback.
 */
#ifndef SMTPGUARD_STORE_H
#define SMTPGUARD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "decay.h"

enum store_backend {
    STORE_BACKEND_MEMORY,
    STORE_BACKEND_REDIS
};

struct store_config {
    enum store_backend backend;
    char *redis_address;        /* "host:port", "[v6]:port" or "unix:/path" */
    int redis_db;               /* SELECT index, 0-15 typically */
    char *redis_password;       /* from password_file or $SMTPGUARD_REDIS_PASSWORD; never logged */
    char *prefix;               /* prepended to every key, e.g. "sg:" */
    unsigned timeout_ms;        /* per request and per connect attempt */
    size_t memory_max_keys;     /* memory backend: keys held at most */
    double top_floor;           /* points; scores at or above enter the top set (0 = off) */
    unsigned top_size;          /* keys per counter in the top set */
};

/* One counter update: the key (without the store prefix), its decay
 * model and the points to add. points == 0 only reads (a missing key is
 * not created). */
struct store_update {
    const char *key;            /* e.g. "ip:192.0.2.7" */
    size_t key_len;             /* bytes */
    struct decay decay;
    double points;              /* may be negative (a whitelist rule subtracting) */
};

enum store_status {
    STORE_OK = 0,
    STORE_TEMPFAIL = -1         /* store down, slow or closed */
};

/* scores[i] is the new score of updates[i] (unrounded). now is the
 * store's clock in seconds since the epoch. */
typedef void (*store_done_cb)(void *arg, int status, const double *scores, size_t n, double now);
/* For resets. */
typedef void (*store_reset_cb)(void *arg, int status);

/* One member of a top query: the key (without the store prefix, e.g.
 * "ip:192.0.2.7") and its score now (unrounded). */
struct store_top_entry {
    const char *key;            /* valid only during the callback */
    size_t key_len;             /* bytes */
    double score;               /* points, decayed to now */
};

/* entries sorted by score, highest first; valid only during the callback. */
typedef void (*store_top_cb)(void *arg, int status, const struct store_top_entry *e, size_t n);

#define STORE_MAX_TOP 1000          /* entries one top query returns at most */
#define STORE_TOP_POOL_FACTOR 16    /* memory store: pool = top_size x this, shared by counters */

struct store;

struct store_ops {
    const char *name;
    int (*open)(struct store **out, const struct store_config *cfg, uv_loop_t *loop,
                char *err, size_t errlen);
    void (*apply)(struct store *st, const struct store_update *u, size_t n,
                  store_done_cb cb, void *arg);
    /* reset - delete keys; cb may be NULL. */
    void (*reset)(struct store *st, const char *const *keys, const size_t *key_lens, size_t n,
                  store_reset_cb cb, void *arg);
    /* peek - the scores of u[i].key now (u[i].points is ignored), writing
     * nothing: no key created, refreshed, expired or put in the top set. */
    void (*peek)(struct store *st, const struct store_update *u, size_t n,
                 store_done_cb cb, void *arg);
    /* top - at most n (<= STORE_MAX_TOP) keys of counter with the highest
     * scores now, from the top set; d is the counter's decay. */
    void (*top)(struct store *st, const char *counter, const struct decay *d, size_t n,
                store_top_cb cb, void *arg);
    /* is_up - false while the backend knows it cannot answer. */
    bool (*is_up)(const struct store *st);
    /* close - fail pending work (deferred), free when all is done. */
    void (*close)(struct store *st);
};

extern const struct store_ops store_memory_ops;
extern const struct store_ops store_redis_ops;

/* Updates in one apply call at most (one request's counters). */
#define STORE_MAX_UPDATES 64

/* The generic handle every backend's struct store starts with. */
struct store_base {
    const struct store_ops *ops;
};

/* store_open - the backend named by cfg->backend. */
int store_open(struct store **out, const struct store_config *cfg, uv_loop_t *loop,
               char *err, size_t errlen);
void store_apply(struct store *st, const struct store_update *u, size_t n,
                 store_done_cb cb, void *arg);
void store_reset(struct store *st, const char *const *keys, const size_t *key_lens, size_t n,
                 store_reset_cb cb, void *arg);
void store_peek(struct store *st, const struct store_update *u, size_t n,
                store_done_cb cb, void *arg);
void store_top(struct store *st, const char *counter, const struct decay *d, size_t n,
               store_top_cb cb, void *arg);
bool store_is_up(const struct store *st);
void store_close(struct store *st);
const char *store_name(const struct store *st);

/* store_config_equal - same backend settings (reload keeps the store). */
bool store_config_equal(const struct store_config *a, const struct store_config *b);
void store_config_fini(struct store_config *cfg);

/* Memory backend clock, injectable for tests: seconds since the epoch.
 * Left as it is, the store reads its event loop's time instead, put on
 * the wall clock once at open (no system call per apply: see mem_now in
 * store_memory.c). */
extern double (*store_memory_clock)(void);

/* store_memory_stats - keys held now, and keys the cap evicted before
 * they expired (since open); for metrics and tests. Memory backend only. */
void store_memory_stats(const struct store *st, size_t *keys, unsigned long long *evictions);

/* store_memory_buckets - the size of the bucket array the keys are in,
 * or are being moved to (it follows the keys held); for tests. */
size_t store_memory_buckets(const struct store *st);

#endif
