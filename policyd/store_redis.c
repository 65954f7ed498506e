/*
 * store_redis - counters in a Redis that every MTA shares.
 *
 * How it works:
 * - One connection (respconn.c: RESP written straight from our argv,
 *   replies parsed by hiredis's reader into a reply arena, nothing
 *   allocated per command). All updates of one apply go out in ONE
 *   EVALSHA of store_redis.lua (embedded at build time; its SHA-1 is
 *   computed here at open, so no SCRIPT LOAD round trip), together with
 *   the other applies of the same loop turn (see "batches" below).
 *   ARGV[1] is "": the script takes Redis's TIME, so all hosts decay on
 *   one clock. A NOSCRIPT reply (Redis restarted, SCRIPT FLUSH, a
 *   failover) sends that same request again as EVAL with the script
 *   text, which also loads it, and the next requests go back to EVALSHA.
 * - Timeouts are ours: a connect timer (which covers AUTH and SELECT
 *   too: a Redis that accepts but does not answer is not up) and request
 *   deadlines. The connection's failure event forgets its pointer;
 *   nothing touches it after.
 * - Deadlines: every request gets the same timeout and requests are sent
 *   in order, so deadlines are ordered too. The callers still waiting sit
 *   on one list, oldest first, under ONE uv_timer armed for the head: a
 *   timer per request would cost a handle (and a close callback) each.
 *   When a deadline passes the caller gets STORE_TEMPFAIL right then;
 *   the connection still holds the request record, so the record is
 *   recycled only when its reply (or the connection's end) comes back
 *   (the late reply is dropped).
 * - Records and batches come from pools that are kept, not freed (no
 *   malloc per request once warm). At most REDIS_MAX_INFLIGHT records may
 *   be in flight or queued; beyond that apply fails fast: a stuck Redis
 *   must not pile up memory for ever.
 * - A connection that owes replies and has sent none for two timeouts is
 *   dropped and reconnected (a Redis paused or a link gone silent); a
 *   socket error or EOF ends the connection at once.
 * - Reconnection backs off from 100 ms, doubling up to 5 s, and starts
 *   over once a connection is up. While it is down, apply fails fast;
 *   during the very first attempt (start-up) requests queue behind
 *   AUTH/SELECT, bounded by their deadline.
 * - Failures reach callers deferred (a uv_check, with an idle handle so
 *   the loop does not block in poll meanwhile, as in store_memory.c),
 *   never from inside apply. Replies and deadlines call back directly:
 *   they already run from the loop.
 * - Logs: "connection lost" once per loss and "connected" once per
 *   recovery (losses of a link that flaps are rate-limited, and so are
 *   their recoveries); connect failures, timeouts and Redis errors go
 *   through log_warn_every, one line per minute at most. Error text
 *   from Redis is quoted (a script error may carry a key). The password
 *   is never logged.
 * - A host name in redis.address is resolved (uv_getaddrinfo, off the
 *   loop) at each connection attempt, so a name that moves is followed.
 * - peek is the same EVALSHA with the decay kinds in capitals: the script
 *   reads and writes nothing. top is the script's "top" mode on the
 *   counter's sorted set (one round trip); the apply path feeds that set
 *   when top_floor is set (three more ARGV).
 *
 * XXX: the sorted set's name is built inside the script, not passed in
 * KEYS: fine on one node, to be revisited with Cluster.
 * XXX: one node only. Sentinel and Cluster (one EVALSHA per node, keys of
 * one request in one slot) are to come.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "counter_wire.h"
#include "log.h"
#include "metrics.h"
#include "respconn.h"
#include "sha1.h"
#include "store_redis_lua.h"
#include "xalloc.h"

#define REDIS_MAX_INFLIGHT 1024 /* request records in flight or queued, at most */
#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 5000
#define REDIS_IDLE_PING_MS 1000     /* an idle connection is PINGed this often */
#define REDIS_RESOLVE_MAX_MS 10000  /* a host name's resolution, on top of the connect timeout */
#define REDIS_DEFAULT_PORT 6379
#define REDIS_DEFAULT_TIMEOUT_MS 1000
/* EVALSHA sha numkeys key... now "kind param points"... */
#define REDIS_ARGV_MAX (7 + 2 * STORE_MAX_UPDATES) /* + prefix, floor, size of the top set */
#define REDIS_NUM_LEN 32        /* bytes for one "%.17g" and its NUL */
#define REDIS_LOG_EVERY 60      /* seconds between repeated warnings */
/* One EVALSHA carries at most this many requests, and this many keys:
 * the script's MGET unpacks every key onto Lua's stack (about 8,000
 * slots), and a long call holds Redis's one thread for everyone. */
#define REDIS_BATCH_MAX_CMDS 64
#define REDIS_BATCH_MAX_KEYS 512
/* Batches sent and not yet answered, at most: while one is out, the
 * applies that follow wait in the pending batch and go out together when
 * its reply comes (a full batch goes out at once). Redis runs one call at
 * a time, so a second call sent meanwhile would only have queued there;
 * held here, it carries every request that arrived in the meantime, and
 * Redis pays its cost per call once for all of them. At 16 connections
 * this took calls from 2.5 to 6.3 requests each and throughput from 21.6k
 * to 26.5k requests/s; 2 out measured no better than no limit
 * (docs/performance.md). A lone request never waits: nothing is out. */
#define REDIS_BATCH_MAX_OUT 1

enum redis_state {
    REDIS_STATE_WAITING,        /* backoff timer running, no context */
    REDIS_STATE_CONNECTING,     /* context connecting or in AUTH/SELECT */
    REDIS_STATE_UP,             /* requests go out */
    REDIS_STATE_CLOSED          /* store_close() was called */
};

enum redis_kind {
    REDIS_KIND_APPLY,
    REDIS_KIND_RESET,
    REDIS_KIND_TOP
};

/* One request; its command's callback argument (or its batch's). */
struct redis_cmd {
    struct store *st;           /* owner */
    struct redis_cmd *next_free; /* pool free list */
    struct redis_cmd *next_all; /* every record, for the final free */
    struct redis_cmd *dl_prev, *dl_next; /* deadline list (waiting callers) */
    enum redis_kind kind;       /* which callback */
    store_done_cb apply_cb;     /* REDIS_KIND_APPLY */
    store_reset_cb reset_cb;    /* REDIS_KIND_RESET; may be NULL */
    store_top_cb top_cb;        /* REDIS_KIND_TOP */
    void *arg;                  /* the caller's */
    uint64_t deadline_ms;       /* loop time (uv_now) */
    bool waiting;               /* the caller has not been answered */
    bool in_flight;             /* sent, its reply not yet back */
    bool retried;               /* EVAL sent after NOSCRIPT */
    bool pooled;                /* on the free list */
    struct redis_cmd *batch_next; /* next request of the same batch */
    size_t batch_off;           /* index of its first score among the reply's numbers */
    size_t n;                   /* updates (apply) */
    int argc;                   /* arguments in argv */
    const char *argv[REDIS_ARGV_MAX]; /* point into buf, or constants */
    size_t argvlen[REDIS_ARGV_MAX]; /* bytes */
    char *buf;                  /* key and number text */
    size_t buf_cap;             /* bytes allocated to buf */
};

/* The applies of one loop turn, sent as ONE EVALSHA: the callback
 * argument for it. Its argv points into the requests' own buffers, which stay
 * put until the reply has come (a NOSCRIPT reply sends it again). */
struct redis_batch {
    struct store *st;           /* owner */
    struct redis_batch *next_free; /* pool free list */
    struct redis_batch *next_all; /* every batch, for the final free */
    struct redis_cmd *head, *tail; /* its requests, chained by batch_next */
    size_t ncmds;               /* requests */
    size_t nkeys;               /* keys, all requests together */
    bool retried;               /* EVAL sent after NOSCRIPT */
    int argc;                   /* arguments in argv */
    const char **argv;          /* the command */
    size_t *argvlen;            /* bytes */
    size_t argv_cap;            /* entries allocated to argv and argvlen */
    char numkeys[24];           /* nkeys as text */
};

/* A failure to report later (fail-fast paths and close). */
struct redis_fail {
    struct redis_fail *next;    /* queue or free list */
    enum redis_kind kind;       /* which callback */
    store_done_cb apply_cb;     /* REDIS_KIND_APPLY */
    store_reset_cb reset_cb;    /* REDIS_KIND_RESET */
    store_top_cb top_cb;        /* REDIS_KIND_TOP */
    void *arg;                  /* the caller's */
};

struct store {
    struct store_base base;     /* must come first */
    uv_loop_t *loop;            /* not owned */
    char *address;              /* as configured, for logs */
    char *host;                 /* TCP host, or NULL */
    int port;                   /* TCP port */
    char *unix_path;            /* unix socket, or NULL */
    char *password;             /* NULL for none; never logged */
    char db[16];                /* SELECT argument */
    char *prefix;               /* prepended to keys */
    size_t prefix_len;          /* bytes */
    unsigned timeout_ms;        /* per request and per connect */
    char top_floor[REDIS_NUM_LEN]; /* "%.17g" points, or "" for no top set */
    char top_size[16];          /* keys per counter's sorted set */
    char sha[SHA1_HEX_LEN + 1]; /* of store_redis_lua */

    enum redis_state state;     /* see enum */
    bool first_done;            /* the first connection attempt has ended */
    struct respconn *conn;      /* NULL unless connecting or up */
    unsigned backoff_ms;        /* next reconnection delay */
    uv_timer_t conn_timer;      /* backoff wait, or connect deadline */
    uv_timer_t deadline_timer;  /* armed for dl_head */
    uv_timer_t ping_timer;      /* an idle connection's PING: is Redis still there? */
    bool pinging;               /* a PING is out */
    uv_check_t check;           /* reports queued failures */
    uv_idle_t idle;             /* keeps poll from blocking while some are queued */
    uv_prepare_t flush;         /* sends the pending batch before the loop polls */
    int handles_open;           /* not yet closed */
    bool closing;               /* store_close() was called */

    struct redis_cmd *dl_head, *dl_tail; /* waiting callers, oldest deadline first */
    struct redis_cmd *free_cmds; /* pool */
    struct redis_cmd *all_cmds; /* every record */
    size_t in_flight;           /* records sent and not yet back */
    struct redis_batch *pending; /* applies of this loop turn, not sent yet */
    size_t queued;              /* records in pending */
    unsigned batches_out;       /* batches sent, their replies not yet back */
    struct redis_batch *free_batches; /* pool */
    struct redis_batch *all_batches; /* every batch */
    uint64_t owing_since_ms;    /* loop time of the last reply, or of the first request owed */

    struct redis_fail *fail_head, *fail_tail; /* failures to report */
    struct redis_fail *free_fails; /* reusable */

    bool quiet_loss;            /* the last loss was not logged: nor is its recovery */
    unsigned addr_pick;         /* which of the name's addresses to try next */
    uint64_t attempt_ms;        /* uv_now() when this connection attempt began */
    struct log_limiter lim_lost;    /* connection losses (a flapping link) */
    struct log_limiter lim_connect; /* connect failures */
    struct log_limiter lim_timeout; /* request deadlines */
    struct log_limiter lim_error;   /* error replies */
    struct log_limiter lim_busy;    /* down or too many in flight */
};

static void redis_connect_start(struct store *st);
static void redis_on_backoff(uv_timer_t *t);
static void redis_check_cb(uv_check_t *h);

/* --- deferred failures ------------------------------------------------ */

static void redis_idle_cb(uv_idle_t *h)
{
    /* Nothing: being active keeps poll from blocking. */
    (void)h;
}

/* redis_fail_later - report STORE_TEMPFAIL to this caller from the loop. */
static void redis_fail_later(struct store *st, enum redis_kind kind, store_done_cb apply_cb,
                             store_reset_cb reset_cb, store_top_cb top_cb, void *arg)
{
    struct redis_fail *f = st->free_fails;

    if (kind == REDIS_KIND_RESET && !reset_cb)
        return;
    if (f)
        st->free_fails = f->next;
    else
        f = xmalloc(sizeof *f);
    f->next = NULL;
    f->kind = kind;
    f->apply_cb = apply_cb;
    f->reset_cb = reset_cb;
    f->top_cb = top_cb;
    f->arg = arg;
    if (st->fail_tail)
        st->fail_tail->next = f;
    else
        st->fail_head = f;
    st->fail_tail = f;
    if (!st->closing && !uv_is_active((uv_handle_t *)&st->check)) {
        uv_check_start(&st->check, redis_check_cb);
        uv_idle_start(&st->idle, redis_idle_cb);
    }
}

static void redis_fail_run(struct store *st)
{
    struct redis_fail *f = st->fail_head;

    st->fail_head = f->next;
    if (!st->fail_head)
        st->fail_tail = NULL;
    if (f->kind == REDIS_KIND_APPLY)
        f->apply_cb(f->arg, STORE_TEMPFAIL, NULL, 0, 0);
    else if (f->kind == REDIS_KIND_TOP)
        f->top_cb(f->arg, STORE_TEMPFAIL, NULL, 0);
    else
        f->reset_cb(f->arg, STORE_TEMPFAIL);
    f->next = st->free_fails;
    st->free_fails = f;
}

static void redis_check_cb(uv_check_t *h)
{
    struct store *st = h->data;
    size_t todo = 0;

    /* Only what was queued before this turn (see store_memory.c). */
    for (struct redis_fail *f = st->fail_head; f; f = f->next)
        todo++;
    while (todo-- > 0 && st->fail_head && !st->closing)
        redis_fail_run(st);
    if (!st->fail_head && !st->closing) {
        uv_check_stop(&st->check);
        uv_idle_stop(&st->idle);
    }
}

/* --- request records and deadlines ------------------------------------ */

static struct redis_cmd *redis_cmd_get(struct store *st)
{
    struct redis_cmd *c = st->free_cmds;

    if (st->in_flight + st->queued >= REDIS_MAX_INFLIGHT)
        return NULL;
    if (c) {
        st->free_cmds = c->next_free;
        c->pooled = false;
    } else {
        c = xcalloc(1, sizeof *c);
        c->st = st;
        c->next_all = st->all_cmds;
        st->all_cmds = c;
    }
    c->next_free = NULL;
    c->waiting = false;
    c->in_flight = false;
    c->retried = false;
    c->batch_next = NULL;
    c->apply_cb = NULL;
    c->reset_cb = NULL;
    c->top_cb = NULL;
    c->n = 0;
    c->argc = 0;
    return c;
}

/* redis_cmd_put - back to the pool once nobody needs it any more. */
static void redis_cmd_put(struct redis_cmd *c)
{
    if (c->waiting || c->in_flight || c->pooled)
        return;
    c->pooled = true;
    c->next_free = c->st->free_cmds;
    c->st->free_cmds = c;
}

static void redis_deadline_cb(uv_timer_t *t);

/*
 * redis_deadline_arm - the timer, for the oldest waiting caller's
 * deadline, and while replies are owed for the moment the connection has
 * sent none for two timeouts (redis_deadline_cb drops it then). The
 * second is needed on its own: at REDIS_MAX_INFLIGHT requests are refused
 * before they get a deadline, so a Redis that stopped answering under
 * load would leave no caller waiting, no timer, and a connection held
 * "up" (failing every request fast) until TCP gave up, if ever.
 */
static void redis_deadline_arm(struct store *st)
{
    uint64_t at = UINT64_MAX;

    if (st->dl_head)
        at = st->dl_head->deadline_ms;
    if (st->in_flight > 0) {
        uint64_t drop_at = st->owing_since_ms + 2 * (uint64_t)st->timeout_ms;
        if (drop_at < at)
            at = drop_at;
    }
    if (at == UINT64_MAX) {
        uv_timer_stop(&st->deadline_timer);
        return;
    }
    uint64_t now = uv_now(st->loop);
    uv_timer_start(&st->deadline_timer, redis_deadline_cb, at > now ? at - now : 0, 0);
}

static void redis_dl_append(struct store *st, struct redis_cmd *c)
{
    c->waiting = true;
    c->deadline_ms = uv_now(st->loop) + st->timeout_ms;
    c->dl_next = NULL;
    c->dl_prev = st->dl_tail;
    if (st->dl_tail)
        st->dl_tail->dl_next = c;
    else
        st->dl_head = c;
    st->dl_tail = c;
    if (st->dl_head == c)
        redis_deadline_arm(st);
}

static void redis_dl_remove(struct store *st, struct redis_cmd *c)
{
    if (c->dl_prev)
        c->dl_prev->dl_next = c->dl_next;
    else
        st->dl_head = c->dl_next;
    if (c->dl_next)
        c->dl_next->dl_prev = c->dl_prev;
    else
        st->dl_tail = c->dl_prev;
    c->dl_prev = c->dl_next = NULL;
    c->waiting = false;
    /* Left armed for the old head, the timer would only fire early and
     * re-arm; stop it when nobody waits and nothing is owed, so an idle
     * store sleeps. */
    if (!st->dl_head && st->in_flight == 0)
        uv_timer_stop(&st->deadline_timer);
}

static void redis_on_reply(struct respconn *rc, const redisReply *reply, void *privdata);

static void redis_on_batch_reply(struct respconn *rc, const redisReply *reply, void *privdata);

/* redis_send - one command on the connection. Returns 0 or -EIO. */
static int redis_send(struct store *st, respconn_reply_cb fn, void *privdata, int argc,
                      const char **argv, const size_t *argvlen)
{
    if (!st->conn)
        return -EIO;
    return respconn_send(st->conn, argc, argv, argvlen, fn, privdata);
}

/* redis_held - n more records are in flight. */
static void redis_held(struct store *st, size_t n)
{
    if (st->in_flight == 0)
        st->owing_since_ms = uv_now(st->loop);
    st->in_flight += n;
}

/*
 * An idle connection is asked PING once a second: without calls out, a
 * Redis that froze or whose host went away would never be noticed, and
 * smtpguard_store_up would say 1 until the next request failed. The PING
 * is owed like a call, so redis_deadline_cb drops the connection when it
 * goes unanswered for two timeouts.
 */
static void redis_on_ping(struct respconn *rc, const redisReply *reply, void *privdata)
{
    struct store *st = privdata;

    (void)rc;
    st->pinging = false;
    st->in_flight--;
    if (reply)
        st->owing_since_ms = uv_now(st->loop);
    if (st->state != REDIS_STATE_CLOSED)
        redis_deadline_arm(st);
}

static void redis_on_ping_timer(uv_timer_t *t)
{
    struct store *st = t->data;
    static const char *const argv[1] = {"PING"};
    static const size_t len[1] = {4};

    if (st->state != REDIS_STATE_UP || st->pinging || st->in_flight > 0 ||
        uv_now(st->loop) - st->owing_since_ms < REDIS_IDLE_PING_MS)
        return;
    if (redis_send(st, redis_on_ping, st, 1, (const char **)argv, len) == 0) {
        st->pinging = true;
        redis_held(st, 1);
        redis_deadline_arm(st);
    }
}

/* redis_cmd_send - send c on its own. Returns 0 or -EIO. */
static int redis_cmd_send(struct store *st, struct redis_cmd *c)
{
    if (redis_send(st, redis_on_reply, c, c->argc, c->argv, c->argvlen) < 0)
        return -EIO;
    redis_held(st, 1);
    c->in_flight = true;
    return 0;
}

/* --- batches ------------------------------------------------------------
 *
 * Redis runs one script call at a time, and what a call costs beyond its
 * keys (reading and dispatching the command, setting up the script, TIME,
 * the MGET, the sorted set of the top) is paid once per call, not once per
 * request. So the applies of one loop turn (every request read from every
 * Postfix connection in that turn) go out as one EVALSHA, sent from a
 * uv_prepare just before the loop polls (and written there), still in
 * the loop turn that read them, so a lone request waits no longer than
 * if it had been written at once. While a batch is out, the next one
 * gathers until its reply (REDIS_BATCH_MAX_OUT), and goes out as soon as
 * that reply is read, before its requests are answered. The script applies the
 * updates in order, so a key shared by two requests of a batch is
 * counted as if they had come one after the other.
 */

static struct redis_batch *redis_batch_get(struct store *st)
{
    struct redis_batch *b = st->free_batches;

    if (b) {
        st->free_batches = b->next_free;
    } else {
        b = xcalloc(1, sizeof *b);
        b->st = st;
        b->next_all = st->all_batches;
        st->all_batches = b;
    }
    b->next_free = NULL;
    b->head = b->tail = NULL;
    b->ncmds = b->nkeys = 0;
    b->retried = false;
    b->argc = 0;
    return b;
}

static void redis_batch_put(struct redis_batch *b)
{
    b->head = b->tail = NULL;
    b->next_free = b->st->free_batches;
    b->st->free_batches = b;
}

/* redis_batch_argv - b's EVALSHA: the keys of every request, then every
 * request's updates ("kind param points"), then the top set's arguments. */
static void redis_batch_argv(struct store *st, struct redis_batch *b)
{
    size_t need = 4 + 2 * b->nkeys + 3, k = 3, a;

    if (b->argv_cap < need) {
        b->argv_cap = need < 64 ? 64 : need;
        free(b->argv);
        free(b->argvlen);
        b->argv = xmalloc(b->argv_cap * sizeof *b->argv);
        b->argvlen = xmalloc(b->argv_cap * sizeof *b->argvlen);
    }
    b->argv[0] = "EVALSHA";
    b->argvlen[0] = 7;
    b->argv[1] = st->sha;
    b->argvlen[1] = SHA1_HEX_LEN;
    b->argv[2] = b->numkeys;
    b->argvlen[2] = (size_t)snprintf(b->numkeys, sizeof b->numkeys, "%zu", b->nkeys);
    a = 4 + b->nkeys;
    b->argv[3 + b->nkeys] = "";   /* now: Redis's TIME */
    b->argvlen[3 + b->nkeys] = 0;
    for (struct redis_cmd *c = b->head; c; c = c->batch_next) {
        /* c->argv is EVALSHA sha numkeys KEY... "" UPDATE... */
        memcpy(b->argv + k, c->argv + 3, c->n * sizeof *b->argv);
        memcpy(b->argvlen + k, c->argvlen + 3, c->n * sizeof *b->argvlen);
        k += c->n;
        memcpy(b->argv + a, c->argv + 4 + c->n, c->n * sizeof *b->argv);
        memcpy(b->argvlen + a, c->argvlen + 4 + c->n, c->n * sizeof *b->argvlen);
        a += c->n;
    }
    if (st->top_floor[0]) {
        b->argv[a] = st->prefix;
        b->argvlen[a++] = st->prefix_len;
        b->argv[a] = st->top_floor;
        b->argvlen[a++] = strlen(st->top_floor);
        b->argv[a] = st->top_size;
        b->argvlen[a++] = strlen(st->top_size);
    }
    b->argc = (int)a;
}

/* redis_batch_flush - send the pending batch; its requests fail (later,
 * from the loop) if it cannot go out. */
static void redis_batch_flush(struct store *st)
{
    struct redis_batch *b = st->pending;

    if (!b)
        return;
    st->pending = NULL;
    st->queued -= b->ncmds;
    redis_batch_argv(st, b);
    if (redis_send(st, redis_on_batch_reply, b, b->argc, b->argv, b->argvlen) == 0) {
        metrics_own->script_calls++;
        metrics_own->script_requests += b->ncmds;
        st->batches_out++;
        redis_held(st, b->ncmds);
        for (struct redis_cmd *c = b->head; c; c = c->batch_next)
            c->in_flight = true;
        return;
    }
    for (struct redis_cmd *c = b->head, *next; c; c = next) {
        next = c->batch_next;
        if (c->waiting) {
            redis_dl_remove(st, c);
            redis_fail_later(st, REDIS_KIND_APPLY, c->apply_cb, NULL, NULL, c->arg);
        }
        redis_cmd_put(c);
    }
    redis_batch_put(b);
}

static void redis_flush_cb(uv_prepare_t *h)
{
    struct store *st = h->data;

    uv_prepare_stop(h);
    if (!st->closing && st->batches_out < REDIS_BATCH_MAX_OUT)
        redis_batch_flush(st);
}

/* redis_batch_add - c joins this loop turn's batch. */
static void redis_batch_add(struct store *st, struct redis_cmd *c)
{
    struct redis_batch *b = st->pending;

    if (b && (b->ncmds >= REDIS_BATCH_MAX_CMDS || b->nkeys + c->n > REDIS_BATCH_MAX_KEYS)) {
        redis_batch_flush(st);
        b = NULL;
    }
    if (!b) {
        b = st->pending = redis_batch_get(st);
        uv_prepare_start(&st->flush, redis_flush_cb);
    }
    c->batch_next = NULL;
    c->batch_off = 1 + b->nkeys;    /* number 0 of the reply is now */
    if (b->tail)
        b->tail->batch_next = c;
    else
        b->head = c;
    b->tail = c;
    b->ncmds++;
    b->nkeys += c->n;
    st->queued++;
}

/* --- connection ------------------------------------------------------- */

/* redis_conn_down - the context is gone (or never came): log, back off. */
static void redis_conn_down(struct store *st, const char *why)
{
    bool was_up = st->state == REDIS_STATE_UP;

    uv_timer_stop(&st->conn_timer);
    st->first_done = true;
    if (st->closing) {
        st->state = REDIS_STATE_CLOSED;
        return;
    }
    st->state = REDIS_STATE_WAITING;
    if (was_up) {
        /* Once per loss, but a link that flaps must not flood the log. */
        uint64_t before = st->lim_lost.last_ms;
        log_warn_every(&st->lim_lost, REDIS_LOG_EVERY, "redis %s: connection lost: %s",
                       st->address, why);
        st->quiet_loss = st->lim_lost.last_ms == before;
    } else {
        /* The next attempt tries the name's next address. */
        st->addr_pick++;
        uint64_t before = st->lim_connect.last_ms;
        log_warn_every(&st->lim_connect, REDIS_LOG_EVERY, "redis %s: cannot connect: %s",
                       st->address, why);
        /* The outage is in the log after all: so will its end be. */
        if (st->lim_connect.last_ms != before)
            st->quiet_loss = false;
    }
    uv_timer_start(&st->conn_timer, redis_on_backoff, st->backoff_ms, 0);
    st->backoff_ms = st->backoff_ms * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS
                                                               : st->backoff_ms * 2;
}

/* redis_drop - give up the current connection ourselves: every request
 * it holds is called back with a NULL reply (callers still waiting get
 * TEMPFAIL) now, or when the reply callback running now returns. */
static void redis_drop(struct store *st, const char *why)
{
    struct respconn *conn = st->conn;

    if (!conn)
        return;
    st->conn = NULL;
    redis_conn_down(st, why);
    respconn_close(conn);
}

/* redis_on_event - the connection is made, or has failed or been lost
 * (its requests have had their NULL replies already). */
static void redis_on_event(struct respconn *rc, int status, const char *why, void *arg)
{
    struct store *st = arg;

    if (status == 0 || st->conn != rc)
        return;     /* up once SELECT answers; or one we dropped ourselves */
    st->conn = NULL;
    redis_conn_down(st, why);
}

static void redis_on_auth(struct respconn *rc, const redisReply *reply, void *privdata)
{
    struct store *st = privdata;

    if (!reply || st->conn != rc)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* A password given to a Redis that has none works anyway. */
        if (strstr(reply->str, "without any password configured") ||
            strstr(reply->str, "no password is set")) {
            log_warn_every(&st->lim_error, REDIS_LOG_EVERY,
                           "redis %s: a password is configured but Redis has none", st->address);
            return;
        }
        char why[LOG_QUOTE_BUF + 32], q[LOG_QUOTE_BUF];
        snprintf(why, sizeof why, "authentication failed: %s",
                 log_quote(reply->str, reply->len, q, sizeof q));
        redis_drop(st, why);
    }
}

static void redis_on_select(struct respconn *rc, const redisReply *reply, void *privdata)
{
    struct store *st = privdata;

    if (!reply || st->conn != rc)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[LOG_QUOTE_BUF + 48], q[LOG_QUOTE_BUF];
        snprintf(why, sizeof why, "SELECT %s failed: %s", st->db,
                 log_quote(reply->str, reply->len, q, sizeof q));
        redis_drop(st, why);
        return;
    }
    uv_timer_stop(&st->conn_timer);
    st->state = REDIS_STATE_UP;
    st->first_done = true;
    /* The backoff starts over at the first good reply to a call, not
     * here: a Redis that takes connections and answers SELECT but never
     * a call must not be reconnected to at the shortest delay forever. */
    st->owing_since_ms = uv_now(st->loop);
    if (!st->quiet_loss)
        log_info("redis %s: connected", st->address);
    st->quiet_loss = false;
}

static void redis_on_backoff(uv_timer_t *t)
{
    redis_connect_start(t->data);
}

static void redis_on_connect_timeout(uv_timer_t *t)
{
    struct store *st = t->data;
    uint64_t now = uv_now(st->loop);
    uint64_t started = st->conn ? respconn_connect_started(st->conn) : 0;
    char why[96];

    /* The timeout is the connect's: a name's resolution (the system's
     * resolver, on its own timeouts) gets up to REDIS_RESOLVE_MAX_MS
     * besides, so that a slow DNS server does not keep the store down. */
    if (st->conn && !started && now - st->attempt_ms < REDIS_RESOLVE_MAX_MS) {
        uv_timer_start(&st->conn_timer, redis_on_connect_timeout, st->timeout_ms, 0);
        return;
    }
    if (started && now - started < st->timeout_ms) {
        uv_timer_start(&st->conn_timer, redis_on_connect_timeout, st->timeout_ms - (now - started),
                       0);
        return;
    }
    if (!started)
        snprintf(why, sizeof why, "%s not resolved within %u ms", st->host ? st->host : "",
                 REDIS_RESOLVE_MAX_MS);
    else
        snprintf(why, sizeof why, "no connection within %u ms", st->timeout_ms);
    redis_drop(st, why);
}

/* redis_connect_start - one connection attempt; AUTH and SELECT are
 * queued at once and go out as soon as the socket connects. */
static void redis_connect_start(struct store *st)
{
    if (st->closing)
        return;
    st->state = REDIS_STATE_CONNECTING;
    st->attempt_ms = uv_now(st->loop);
    st->conn = respconn_open(st->loop, st->host, st->port, st->unix_path, st->addr_pick,
                             redis_on_event, st);
    if (!st->conn)
        return;     /* failed at once: redis_on_event has backed off */
    if (st->password) {
        const char *argv[2] = {"AUTH", st->password};
        size_t len[2] = {4, strlen(st->password)};
        respconn_send(st->conn, 2, argv, len, redis_on_auth, st);
    }
    {
        const char *argv[2] = {"SELECT", st->db};
        size_t len[2] = {6, strlen(st->db)};
        respconn_send(st->conn, 2, argv, len, redis_on_select, st);
    }
    uv_timer_start(&st->conn_timer, redis_on_connect_timeout, st->timeout_ms, 0);
}

/* --- replies and deadlines -------------------------------------------- */

/* redis_parse_nums - numbers off .. off+n-1 of the script's reply, one
 * string of now, score... (each number 8 bytes, counter_wire.h), into
 * out. Returns 0 or -EPROTO. */
static int redis_parse_nums(const redisReply *reply, size_t off, size_t n, double *out)
{
    if (reply->type != REDIS_REPLY_STRING || reply->len % COUNTER_WIRE_DOUBLE_LEN != 0 ||
        off + n > reply->len / COUNTER_WIRE_DOUBLE_LEN)
        return -EPROTO;
    for (size_t i = 0; i < n; i++)
        out[i] = counter_wire_double(reply->str + (off + i) * COUNTER_WIRE_DOUBLE_LEN);
    return 0;
}

/* redis_parse_scores - now, score... of n updates. Returns 0 or -EPROTO. */
static int redis_parse_scores(const redisReply *reply, size_t n, double *scores, double *now)
{
    if (reply->type != REDIS_REPLY_STRING || reply->len != (n + 1) * COUNTER_WIRE_DOUBLE_LEN)
        return -EPROTO;
    if (redis_parse_nums(reply, 0, 1, now) < 0)
        return -EPROTO;
    return redis_parse_nums(reply, 1, n, scores);
}

/* redis_top_reply - {now, key, score, ...} to entries without the
 * prefix; recycles c and calls back. */
static void redis_top_reply(struct store *st, struct redis_cmd *c, const redisReply *reply)
{
    static struct store_top_entry entries[STORE_MAX_TOP]; /* one loop: one caller at a time */
    size_t n = 0;
    int status = STORE_OK;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 || reply->elements % 2 != 1)
        status = STORE_TEMPFAIL;
    for (size_t i = 1; status == STORE_OK && i + 1 < reply->elements && n < STORE_MAX_TOP; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        char num[REDIS_NUM_LEN + 16], *end;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            (size_t)k->len < st->prefix_len || v->len == 0 || (size_t)v->len >= sizeof num) {
            status = STORE_TEMPFAIL;
            break;
        }
        memcpy(num, v->str, (size_t)v->len);
        num[v->len] = '\0';
        entries[n].score = strtod(num, &end);
        if (*end != '\0') {
            status = STORE_TEMPFAIL;
            break;
        }
        entries[n].key = k->str + st->prefix_len;
        entries[n].key_len = (size_t)k->len - st->prefix_len;
        n++;
    }
    if (status != STORE_OK)
        log_warn_every(&st->lim_error, REDIS_LOG_EVERY,
                       "redis %s: unexpected reply to the top query (type %d)", st->address,
                       reply->type);
    store_top_cb cb = c->top_cb;
    void *arg = c->arg;
    redis_cmd_put(c);
    cb(arg, status, status == STORE_OK ? entries : NULL, status == STORE_OK ? n : 0);
}

static void redis_on_reply(struct respconn *rc, const redisReply *reply, void *privdata)
{
    struct redis_cmd *c = privdata;
    struct store *st = c->st;
    double scores[STORE_MAX_UPDATES], now = 0;
    int status = STORE_TEMPFAIL;

    c->in_flight = false;
    st->in_flight--;
    if (reply)
        st->owing_since_ms = uv_now(st->loop);
    if (reply && reply->type != REDIS_REPLY_ERROR)
        st->backoff_ms = REDIS_BACKOFF_MIN_MS;

    if (reply && reply->type == REDIS_REPLY_ERROR && c->kind != REDIS_KIND_RESET &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && !c->retried && c->waiting && st->conn == rc) {
        /* The script is not loaded: EVAL loads it and runs this request. */
        c->retried = true;
        c->argv[0] = "EVAL";
        c->argvlen[0] = 4;
        c->argv[1] = store_redis_lua;
        c->argvlen[1] = sizeof store_redis_lua - 1;
        if (redis_cmd_send(st, c) == 0)
            return;
    }
    if (!c->waiting) {
        /* Answered already (deadline passed, or the store closed): the
         * late reply is dropped. */
        redis_cmd_put(c);
        return;
    }
    redis_dl_remove(st, c);

    if (!reply) {
        /* Connection gone: logged by redis_conn_down. */
    } else if (reply->type == REDIS_REPLY_ERROR) {
        /* Quoted: a script error may carry a key, and keys come from
         * peers. */
        char q[LOG_QUOTE_BUF];
        log_warn_every(&st->lim_error, REDIS_LOG_EVERY, "redis %s: error reply: %s", st->address,
                       log_quote(reply->str, reply->len, q, sizeof q));
    } else if (c->kind == REDIS_KIND_APPLY) {
        if (redis_parse_scores(reply, c->n, scores, &now) == 0)
            status = STORE_OK;
        else
            log_warn_every(&st->lim_error, REDIS_LOG_EVERY,
                           "redis %s: unexpected reply to the counter script (type %d)",
                           st->address, reply->type);
    } else if (c->kind == REDIS_KIND_TOP) {
        redis_top_reply(st, c, reply);
        return;
    } else {
        status = STORE_OK;
    }

    /* Copy out, recycle, then call: the callback may apply again. A top
     * query gets here only when it failed (no reply, an error reply). */
    enum redis_kind kind = c->kind;
    store_done_cb apply_cb = c->apply_cb;
    store_reset_cb reset_cb = c->reset_cb;
    store_top_cb top_cb = c->top_cb;
    void *arg = c->arg;
    size_t n = c->n;
    redis_cmd_put(c);
    if (kind == REDIS_KIND_APPLY)
        apply_cb(arg, status, status == STORE_OK ? scores : NULL, status == STORE_OK ? n : 0, now);
    else if (kind == REDIS_KIND_TOP)
        top_cb(arg, STORE_TEMPFAIL, NULL, 0);
    else if (reset_cb)
        reset_cb(arg, status);
}

/* redis_batch_waiting - some request of b still waits for its answer. */
static bool redis_batch_waiting(const struct redis_batch *b)
{
    for (const struct redis_cmd *c = b->head; c; c = c->batch_next)
        if (c->waiting)
            return true;
    return false;
}

static void redis_on_batch_reply(struct respconn *rc, const redisReply *reply, void *privdata)
{
    struct redis_batch *b = privdata;
    struct store *st = b->st;
    double scores[STORE_MAX_UPDATES], now = 0;
    int status = STORE_TEMPFAIL;

    if (reply)
        st->owing_since_ms = uv_now(st->loop);
    if (reply && reply->type != REDIS_REPLY_ERROR)
        st->backoff_ms = REDIS_BACKOFF_MIN_MS;
    if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
        !b->retried && st->conn == rc && redis_batch_waiting(b)) {
        /* The script is not loaded: EVAL loads it and runs this batch. */
        b->retried = true;
        b->argv[0] = "EVAL";
        b->argvlen[0] = 4;
        b->argv[1] = store_redis_lua;
        b->argvlen[1] = sizeof store_redis_lua - 1;
        if (redis_send(st, redis_on_batch_reply, b, b->argc, b->argv, b->argvlen) == 0)
            return;
    }
    st->in_flight -= b->ncmds;
    st->batches_out--;
    /* The batch gathered meanwhile goes out before this one's requests
     * are answered: Redis runs it while we write the answers, rather
     * than wait idle through them and the rest of this loop turn. */
    if (reply && st->pending && !st->closing && st->batches_out < REDIS_BATCH_MAX_OUT)
        redis_batch_flush(st);

    if (!reply) {
        /* Connection gone: logged by redis_conn_down. */
    } else if (reply->type == REDIS_REPLY_ERROR) {
        char q[LOG_QUOTE_BUF];
        log_warn_every(&st->lim_error, REDIS_LOG_EVERY, "redis %s: error reply: %s", st->address,
                       log_quote(reply->str, reply->len, q, sizeof q));
    } else if (reply->type != REDIS_REPLY_STRING ||
               reply->len != (b->nkeys + 1) * COUNTER_WIRE_DOUBLE_LEN ||
               redis_parse_nums(reply, 0, 1, &now) < 0) {
        log_warn_every(&st->lim_error, REDIS_LOG_EVERY,
                       "redis %s: unexpected reply to the counter script (type %d)", st->address,
                       reply->type);
    } else {
        status = STORE_OK;
    }

    for (struct redis_cmd *c = b->head, *next; c; c = next) {
        next = c->batch_next;
        c->in_flight = false;
        if (!c->waiting) {
            /* Answered already (deadline passed, or the store closed). */
            redis_cmd_put(c);
            continue;
        }
        redis_dl_remove(st, c);
        int cst = status;
        if (cst == STORE_OK && redis_parse_nums(reply, c->batch_off, c->n, scores) < 0) {
            log_warn_every(&st->lim_error, REDIS_LOG_EVERY,
                           "redis %s: unexpected reply to the counter script (too short)",
                           st->address);
            cst = STORE_TEMPFAIL;
        }
        /* Copy out, recycle, then call: the callback may apply again (it
         * joins the next batch) or close the store (the requests after it
         * are then no longer waiting). */
        store_done_cb cb = c->apply_cb;
        void *arg = c->arg;
        size_t n = c->n;
        redis_cmd_put(c);
        cb(arg, cst, cst == STORE_OK ? scores : NULL, cst == STORE_OK ? n : 0, now);
    }
    redis_batch_put(b);
    if (st->pending && !st->closing)
        uv_prepare_start(&st->flush, redis_flush_cb);
}

static void redis_deadline_cb(uv_timer_t *t)
{
    struct store *st = t->data;
    uint64_t now = uv_now(st->loop);
    unsigned expired = 0;

    while (st->dl_head && st->dl_head->deadline_ms <= now && !st->closing) {
        struct redis_cmd *c = st->dl_head;
        redis_dl_remove(st, c);
        expired++;
        /* Still in flight: recycled when its reply comes. */
        if (c->kind == REDIS_KIND_APPLY)
            c->apply_cb(c->arg, STORE_TEMPFAIL, NULL, 0, 0);
        else if (c->kind == REDIS_KIND_TOP)
            c->top_cb(c->arg, STORE_TEMPFAIL, NULL, 0);
        else if (c->reset_cb)
            c->reset_cb(c->arg, STORE_TEMPFAIL);
    }
    if (st->closing)
        return;
    if (expired)
        log_warn_every(&st->lim_timeout, REDIS_LOG_EVERY, "redis %s: no answer within %u ms",
                       st->address, st->timeout_ms);
    if (st->in_flight > 0 && now - st->owing_since_ms >= 2 * (uint64_t)st->timeout_ms) {
        char why[64];
        snprintf(why, sizeof why, "no reply for %llu ms",
                 (unsigned long long)(now - st->owing_since_ms));
        redis_drop(st, why);
    }
    /* A callback may have closed the store (its handles are closing). */
    if (!st->closing)
        redis_deadline_arm(st);
}

/* --- store_ops -------------------------------------------------------- */

/* redis_address_parse - "host:port", "[v6]:port", "unix:/path". */
static int redis_address_parse(struct store *st, const char *addr, char *err, size_t errlen)
{
    const char *colon, *host_end, *port_s;
    char *end;
    long port = REDIS_DEFAULT_PORT;

    if (strncmp(addr, "unix:", 5) == 0) {
        if (addr[5] != '/') {
            snprintf(err, errlen, "redis address \"%s\": want unix:/absolute/path", addr);
            return -EINVAL;
        }
        st->unix_path = xstrdup(addr + 5);
        return 0;
    }
    if (addr[0] == '[') {
        host_end = strchr(addr, ']');
        if (!host_end || host_end == addr + 1 || (host_end[1] && host_end[1] != ':')) {
            snprintf(err, errlen, "redis address \"%s\": want [ipv6]:port", addr);
            return -EINVAL;
        }
        st->host = xstrndup(addr + 1, (size_t)(host_end - addr - 1));
        port_s = host_end[1] ? host_end + 2 : NULL;
    } else {
        colon = strchr(addr, ':');
        if (colon && strchr(colon + 1, ':')) {
            snprintf(err, errlen, "redis address \"%s\": write an IPv6 address as [addr]:port",
                     addr);
            return -EINVAL;
        }
        if (colon == addr || !addr[0]) {
            snprintf(err, errlen, "redis address \"%s\": no host", addr);
            return -EINVAL;
        }
        st->host = colon ? xstrndup(addr, (size_t)(colon - addr)) : xstrdup(addr);
        port_s = colon ? colon + 1 : NULL;
    }
    if (port_s) {
        errno = 0;
        port = strtol(port_s, &end, 10);
        if (end == port_s || *end || errno || port < 1 || port > 65535) {
            snprintf(err, errlen, "redis address \"%s\": bad port", addr);
            return -EINVAL;
        }
    }
    st->port = (int)port;
    return 0;
}

static void redis_free(struct store *st)
{
    while (st->all_cmds) {
        struct redis_cmd *c = st->all_cmds;
        st->all_cmds = c->next_all;
        free(c->buf);
        free(c);
    }
    while (st->all_batches) {
        struct redis_batch *b = st->all_batches;
        st->all_batches = b->next_all;
        free(b->argv);
        free(b->argvlen);
        free(b);
    }
    while (st->free_fails) {
        struct redis_fail *f = st->free_fails;
        st->free_fails = f->next;
        free(f);
    }
    free(st->address);
    free(st->host);
    free(st->unix_path);
    if (st->password) {
        memset(st->password, 0, strlen(st->password));
        free(st->password);
    }
    free(st->prefix);
    free(st);
}

static int redis_open(struct store **out, const struct store_config *cfg, uv_loop_t *loop,
                      char *err, size_t errlen)
{
    struct store *st = xcalloc(1, sizeof *st);
    int rc;

    st->base.ops = &store_redis_ops;
    st->loop = loop;
    if (!cfg->redis_address || !cfg->redis_address[0]) {
        snprintf(err, errlen, "redis store: no address");
        free(st);
        return -EINVAL;
    }
    st->address = xstrdup(cfg->redis_address);
    rc = redis_address_parse(st, cfg->redis_address, err, errlen);
    if (rc < 0) {
        redis_free(st);
        return rc;
    }
    if (cfg->redis_db < 0) {
        snprintf(err, errlen, "redis store: bad db %d", cfg->redis_db);
        redis_free(st);
        return -EINVAL;
    }
    snprintf(st->db, sizeof st->db, "%d", cfg->redis_db);
    if (cfg->redis_password && cfg->redis_password[0])
        st->password = xstrdup(cfg->redis_password);
    st->prefix = xstrdup(cfg->prefix ? cfg->prefix : "");
    st->prefix_len = strlen(st->prefix);
    st->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : REDIS_DEFAULT_TIMEOUT_MS;
    if (cfg->top_floor > 0 && cfg->top_size > 0) {
        snprintf(st->top_floor, sizeof st->top_floor, "%.17g", cfg->top_floor);
        snprintf(st->top_size, sizeof st->top_size, "%u", cfg->top_size);
    }
    sha1_hex(store_redis_lua, sizeof store_redis_lua - 1, st->sha);
    st->backoff_ms = REDIS_BACKOFF_MIN_MS;

    uv_timer_init(loop, &st->conn_timer);
    uv_timer_init(loop, &st->deadline_timer);
    uv_timer_init(loop, &st->ping_timer);
    uv_timer_start(&st->ping_timer, redis_on_ping_timer, REDIS_IDLE_PING_MS, REDIS_IDLE_PING_MS);
    uv_unref((uv_handle_t *)&st->ping_timer);
    uv_check_init(loop, &st->check);
    uv_idle_init(loop, &st->idle);
    uv_prepare_init(loop, &st->flush);
    st->conn_timer.data = st->deadline_timer.data = st->ping_timer.data = st;
    st->check.data = st->idle.data = st->flush.data = st;
    st->handles_open = 6;
    st->state = REDIS_STATE_WAITING;
    redis_connect_start(st);
    *out = st;
    return 0;
}

/* redis_fmt_num - v as %.17g would write it (both survive the round trip
 * bit for bit), into out (REDIS_NUM_LEN bytes); returns the length.
 * Whole numbers (points of 1, half-lives in seconds: most arguments)
 * are written by hand, which costs a tenth of the snprintf. */
static size_t redis_fmt_num(double v, char *out)
{
    if (v > -1e15 && v < 1e15 && v == (double)(long long)v && !(v == 0 && signbit(v))) {
        char tmp[24];
        size_t n = 0, o = 0;
        long long x = (long long)v;
        unsigned long long u = x < 0 ? (unsigned long long)-x : (unsigned long long)x;
        do {
            tmp[n++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (x < 0)
            out[o++] = '-';
        while (n)
            out[o++] = tmp[--n];
        out[o] = '\0';
        return o;
    }
    return (size_t)snprintf(out, REDIS_NUM_LEN, "%.17g", v);
}

/* redis_cmd_reserve - make c->buf hold at least size bytes. */
static void redis_cmd_reserve(struct redis_cmd *c, size_t size)
{
    if (c->buf_cap >= size)
        return;
    c->buf_cap = size < 1024 ? 1024 : size;
    free(c->buf);
    c->buf = xmalloc(c->buf_cap);
}

/* redis_refuse - the reason this request cannot go out now, or NULL. */
static const char *redis_refuse(const struct store *st)
{
    if (st->closing)
        return "closing";
    /* While the first connection is being made, requests queue behind
     * AUTH and SELECT (their deadline still runs): a daemon that has just
     * started counts its first requests instead of failing them. Once
     * Redis has been seen down, requests fail at once until it is back,
     * rather than each hold an smtpd for the whole timeout. */
    bool starting = st->state == REDIS_STATE_CONNECTING && !st->first_done;
    if ((st->state != REDIS_STATE_UP && !starting) || !st->conn)
        return "not connected";
    if (st->in_flight + st->queued >= REDIS_MAX_INFLIGHT)
        return "too many requests in flight";
    return NULL;
}

/* redis_counters - apply (peek false) or peek: one EVALSHA. */
static void redis_counters(struct store *st, const struct store_update *u, size_t n,
                           store_done_cb cb, void *arg, bool peek)
{
    const char *why = redis_refuse(st);
    struct redis_cmd *c;
    size_t need = 0;
    char *p;

    if (!why && n > STORE_MAX_UPDATES)
        why = "too many updates in one request";
    if (why) {
        if (!st->closing && st->state == REDIS_STATE_UP)
            log_warn_every(&st->lim_busy, REDIS_LOG_EVERY, "redis %s: request refused: %s",
                           st->address, why);
        redis_fail_later(st, REDIS_KIND_APPLY, cb, NULL, NULL, arg);
        return;
    }
    c = redis_cmd_get(st);
    c->kind = REDIS_KIND_APPLY;
    c->apply_cb = cb;
    c->arg = arg;
    c->n = n;

    for (size_t i = 0; i < n; i++)
        need += st->prefix_len + u[i].key_len + 2 * REDIS_NUM_LEN;
    redis_cmd_reserve(c, need + REDIS_NUM_LEN);
    p = c->buf;

    c->argv[0] = "EVALSHA";
    c->argvlen[0] = 7;
    c->argv[1] = st->sha;
    c->argvlen[1] = SHA1_HEX_LEN;
    c->argv[2] = p;
    c->argvlen[2] = 0;
    if (peek) {
        /* An apply goes out in its batch's command, which counts the
         * keys of all its requests (redis_batch_argv): only a peek is
         * sent as it stands. */
        c->argvlen[2] = (size_t)snprintf(p, REDIS_NUM_LEN, "%zu", n);
        p += c->argvlen[2] + 1;
    }
    for (size_t i = 0; i < n; i++) {
        c->argv[3 + i] = p;
        c->argvlen[3 + i] = st->prefix_len + u[i].key_len;
        memcpy(p, st->prefix, st->prefix_len);
        memcpy(p + st->prefix_len, u[i].key, u[i].key_len);
        p += c->argvlen[3 + i];
    }
    c->argv[3 + n] = "";        /* now: Redis's TIME */
    c->argvlen[3 + n] = 0;
    for (size_t i = 0; i < n; i++) {
        /* "h 600 1": kind (capital for a peek), parameter, points. */
        char *q = p;
        if (u[i].decay.kind == DECAY_HALF_LIFE)
            *q++ = peek ? 'H' : 'h';
        else
            *q++ = peek ? 'L' : 'l';
        *q++ = ' ';
        q += redis_fmt_num(u[i].decay.param, q);
        *q++ = ' ';
        q += redis_fmt_num(u[i].points, q);
        c->argv[4 + n + i] = p;
        c->argvlen[4 + n + i] = (size_t)(q - p);
        p = q + 1;
    }
    c->argc = (int)(4 + 2 * n);
    if (!peek && st->top_floor[0]) {
        c->argv[c->argc] = st->prefix;
        c->argvlen[c->argc++] = st->prefix_len;
        c->argv[c->argc] = st->top_floor;
        c->argvlen[c->argc++] = strlen(st->top_floor);
        c->argv[c->argc] = st->top_size;
        c->argvlen[c->argc++] = strlen(st->top_size);
    }

    if (!peek) {
        /* Sent with the other applies of this loop turn. */
        redis_batch_add(st, c);
        redis_dl_append(st, c);
        return;
    }
    if (redis_cmd_send(st, c) < 0) {
        redis_cmd_put(c);
        redis_fail_later(st, REDIS_KIND_APPLY, cb, NULL, NULL, arg);
        return;
    }
    redis_dl_append(st, c);
}

static void redis_apply(struct store *st, const struct store_update *u, size_t n, store_done_cb cb,
                        void *arg)
{
    redis_counters(st, u, n, cb, arg, false);
}

static void redis_peek(struct store *st, const struct store_update *u, size_t n, store_done_cb cb,
                       void *arg)
{
    redis_counters(st, u, n, cb, arg, true);
}

static void redis_top(struct store *st, const char *counter, const struct decay *d, size_t n,
                      store_top_cb cb, void *arg)
{
    const char *why = redis_refuse(st);
    size_t clen = strlen(counter);
    struct redis_cmd *c;
    char *p;

    if (why) {
        redis_fail_later(st, REDIS_KIND_TOP, NULL, NULL, cb, arg);
        return;
    }
    if (n > STORE_MAX_TOP)
        n = STORE_MAX_TOP;
    c = redis_cmd_get(st);
    c->kind = REDIS_KIND_TOP;
    c->top_cb = cb;
    c->arg = arg;
    redis_cmd_reserve(c, st->prefix_len + clen + 8 + 2 * REDIS_NUM_LEN);
    p = c->buf;
    c->argv[0] = "EVALSHA";
    c->argvlen[0] = 7;
    c->argv[1] = st->sha;
    c->argvlen[1] = SHA1_HEX_LEN;
    c->argv[2] = "1";
    c->argvlen[2] = 1;
    c->argv[3] = p;
    c->argvlen[3] = (size_t)sprintf(p, "%s@top:%s", st->prefix, counter);
    p += c->argvlen[3] + 1;
    c->argv[4] = "top";
    c->argvlen[4] = 3;
    c->argv[5] = d->kind == DECAY_HALF_LIFE ? "h" : "l";
    c->argvlen[5] = 1;
    c->argv[6] = p;
    c->argvlen[6] = (size_t)snprintf(p, REDIS_NUM_LEN, "%.17g", d->param);
    p += c->argvlen[6] + 1;
    c->argv[7] = p;
    c->argvlen[7] = (size_t)snprintf(p, REDIS_NUM_LEN, "%zu", n);
    p += c->argvlen[7] + 1;
    c->argv[8] = st->top_floor[0] ? st->top_floor : "0";
    c->argvlen[8] = strlen(c->argv[8]);
    c->argc = 9;
    if (redis_cmd_send(st, c) < 0) {
        redis_cmd_put(c);
        redis_fail_later(st, REDIS_KIND_TOP, NULL, NULL, cb, arg);
        return;
    }
    redis_dl_append(st, c);
}

static void redis_reset(struct store *st, const char *const *keys, const size_t *key_lens, size_t n,
                        store_reset_cb cb, void *arg)
{
    const char *why = redis_refuse(st);
    struct redis_cmd *c;
    size_t need = 0;
    char *p;

    if (!why && n + 1 > REDIS_ARGV_MAX)
        why = "too many keys in one reset";
    if (why) {
        if (!st->closing && st->state == REDIS_STATE_UP)
            log_warn_every(&st->lim_busy, REDIS_LOG_EVERY, "redis %s: reset refused: %s",
                           st->address, why);
        redis_fail_later(st, REDIS_KIND_RESET, NULL, cb, NULL, arg);
        return;
    }
    c = redis_cmd_get(st);
    c->kind = REDIS_KIND_RESET;
    c->reset_cb = cb;
    c->arg = arg;
    for (size_t i = 0; i < n; i++)
        need += st->prefix_len + key_lens[i];
    redis_cmd_reserve(c, need + 1);
    p = c->buf;
    if (n == 0) {
        /* Nothing to delete: a PING, so that the answer still comes
         * from the loop and still says whether Redis is there. */
        c->argv[0] = "PING";
        c->argvlen[0] = 4;
        c->argc = 1;
    } else {
        c->argv[0] = "DEL";
        c->argvlen[0] = 3;
        for (size_t i = 0; i < n; i++) {
            c->argv[1 + i] = p;
            c->argvlen[1 + i] = st->prefix_len + key_lens[i];
            memcpy(p, st->prefix, st->prefix_len);
            memcpy(p + st->prefix_len, keys[i], key_lens[i]);
            p += c->argvlen[1 + i];
        }
        c->argc = (int)(1 + n);
    }
    if (redis_cmd_send(st, c) < 0) {
        redis_cmd_put(c);
        redis_fail_later(st, REDIS_KIND_RESET, NULL, cb, NULL, arg);
        return;
    }
    redis_dl_append(st, c);
}

static bool redis_is_up(const struct store *st)
{
    return !st->closing && st->state == REDIS_STATE_UP;
}

static void redis_close_cb(uv_handle_t *h)
{
    struct store *st = h->data;

    if (--st->handles_open > 0)
        return;
    /* Everything in flight came back when the connection was closed. */
    if (st->in_flight != 0)
        log_panic("redis %s: %zu requests still in flight at close", st->address,
                  st->in_flight);
    while (st->fail_head)
        redis_fail_run(st);
    redis_free(st);
}

static void redis_close(struct store *st)
{
    if (st->closing)
        return;
    st->closing = true;
    /* Callers still waiting are failed from the loop, not from here. */
    while (st->dl_head) {
        struct redis_cmd *c = st->dl_head;
        redis_dl_remove(st, c);
        /* Still in flight: recycled when closing the connection hands it back. */
        redis_fail_later(st, c->kind, c->apply_cb, c->reset_cb, c->top_cb, c->arg);
    }
    if (st->pending) {
        /* Never sent: nobody else holds these records. */
        struct redis_batch *b = st->pending;
        st->pending = NULL;
        st->queued = 0;
        for (struct redis_cmd *c = b->head, *next; c; c = next) {
            next = c->batch_next;
            redis_cmd_put(c);
        }
        redis_batch_put(b);
    }
    if (st->conn) {
        struct respconn *conn = st->conn;
        st->conn = NULL;
        respconn_close(conn);
    }
    st->state = REDIS_STATE_CLOSED;
    uv_close((uv_handle_t *)&st->conn_timer, redis_close_cb);
    uv_close((uv_handle_t *)&st->deadline_timer, redis_close_cb);
    uv_close((uv_handle_t *)&st->ping_timer, redis_close_cb);
    uv_close((uv_handle_t *)&st->check, redis_close_cb);
    uv_close((uv_handle_t *)&st->idle, redis_close_cb);
    uv_close((uv_handle_t *)&st->flush, redis_close_cb);
}

const struct store_ops store_redis_ops = {
    .name = "redis",
    .open = redis_open,
    .apply = redis_apply,
    .reset = redis_reset,
    .peek = redis_peek,
    .top = redis_top,
    .is_up = redis_is_up,
    .close = redis_close,
};
