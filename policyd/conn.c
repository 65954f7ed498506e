/*
 * conn - one Postfix connection. See conn.h.
 *
 * The request cycle: read -> protocol_scan (incremental, limits checked
 * as bytes arrive) -> protocol_parse in place -> rules_eval_points ->
 * one store_apply -> rules_decide -> answer (possibly held back by a
 * `wait`) -> log and side effects -> drop the request's bytes and look
 * for the next one. Nothing here allocates per request: the read buffer,
 * the request arena, the eval state and the answer buffers are reused.
 */
#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "server.h"
#include "store.h"
#include "xalloc.h"

#define CONN_INITIAL_BUFFER 2048 /* bytes; a typical request is 500-900 */

static void conn_process(struct conn *c);
static void conn_finish(struct conn *c);

static uint64_t conn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    struct server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->n_conns--;
    if (c->cfg)
        config_unref(c->cfg);
    request_fini(&c->req);
    free(c->rbuf);
    free(c);
    server_conn_closed(srv);
}

static void conn_on_close(uv_handle_t *h)
{
    conn_unref(h->data);
}

void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    log_debug("c=%lx closed after %lu requests", c->id, c->req_no);
    uv_close(&c->h.handle, conn_on_close);
    uv_close((uv_handle_t *)&c->idle_timer, conn_on_close);
    uv_close((uv_handle_t *)&c->wait_timer, conn_on_close);
}

void conn_shutdown(struct conn *c)
{
    if (c->busy)
        c->close_when_idle = true;
    else
        conn_close(c);
}

static void conn_on_idle(uv_timer_t *t)
{
    struct conn *c = t->data;
    log_info("c=%lx idle for %.0fs, closing", c->id, c->srv->cfg->limits.idle_timeout);
    conn_close(c);
}

static void conn_idle_restart(struct conn *c)
{
    uint64_t ms = (uint64_t)(c->srv->cfg->limits.idle_timeout * 1000);
    uv_timer_start(&c->idle_timer, conn_on_idle, ms, 0);
}

struct conn *conn_new(struct server *srv, bool is_pipe)
{
    struct conn *c = xcalloc(1, sizeof *c);
    c->srv = srv;
    c->id = ++srv->next_conn_id;
    if (is_pipe)
        uv_pipe_init(srv->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(srv->loop, &c->h.tcp);
    uv_timer_init(srv->loop, &c->idle_timer);
    uv_timer_init(srv->loop, &c->wait_timer);
    c->h.handle.data = c;
    c->idle_timer.data = c;
    c->wait_timer.data = c;
    c->refs = 3; /* the three handles */
    request_init(&c->req);
    protocol_scan_reset(&c->scan);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    snprintf(c->peer, sizeof c->peer, "%s", is_pipe ? "unix" : "?");
    return c;
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = h->data;
    /* Start small and grow up to the request cap only when a request
     * needs it: ten thousand idle Postfix connections must not cost
     * ten thousand maximum-size buffers. Never while a request is being
     * answered: its attributes point into this buffer. */
    size_t cap = c->srv->cfg->limits.protocol.max_request + 1;
    if (!c->busy && c->rcap - c->rlen < 512 && c->rcap < cap) {
        size_t want = c->rcap ? c->rcap * 2 : CONN_INITIAL_BUFFER;
        if (want > cap)
            want = cap;
        c->rbuf = xrealloc(c->rbuf, want);
        c->rcap = want;
    }
    buf->base = c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* conn_update_reading - a client that sends ahead of our answers (Postfix
 * never does) can fill the buffer while a request is in flight, and the
 * buffer may not move then (the request points into it): stop reading
 * until the answer is out, then go on. */
static void conn_update_reading(struct conn *c)
{
    if (c->closing)
        return;
    bool full = c->busy && c->rcap - c->rlen < 512;
    if (full && !c->read_paused) {
        uv_read_stop(&c->h.stream);
        c->read_paused = true;
    } else if (!full && c->read_paused) {
        c->read_paused = false;
        uv_read_start(&c->h.stream, conn_on_alloc, conn_on_read);
    }
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct conn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_ENOBUFS)
            log_warn_every(&c->srv->proto_limiter, 10,
                           "c=%lx peer=%s sent more than one request without waiting for the answer, closing",
                           c->id, c->peer);
        else if (nread != UV_EOF)
            log_info("c=%lx read error: %s", c->id, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->rlen += (size_t)nread;
    conn_idle_restart(c);
    if (!c->busy)
        conn_process(c);
    conn_update_reading(c);
}

void conn_start(struct conn *c)
{
    conn_idle_restart(c);
    uv_read_start(&c->h.stream, conn_on_alloc, conn_on_read);
}

/* ---- answering ---- */

static void conn_on_written(uv_write_t *w, int status)
{
    struct conn *c = w->data;
    c->writing = false;
    if (status < 0) {
        if (!c->closing)
            log_info("c=%lx write error: %s", c->id, uv_strerror(status));
        conn_close(c);
    }
    conn_unref(c);
}

static void conn_write_answer(struct conn *c)
{
    size_t alen = strlen(c->answer);
    size_t n = protocol_format_answer(c->wbuf, sizeof c->wbuf, c->answer, alen);
    if (n == 0) {
        log_panic("c=%lx answer does not fit: %zu bytes", c->id, alen); /* sizes are static */
    }
    uv_buf_t b = uv_buf_init(c->wbuf, (unsigned)n);
    int rc = uv_try_write(&c->h.stream, &b, 1);
    if (rc == (int)n)
        return;
    if (rc < 0 && rc != UV_EAGAIN) {
        log_info("c=%lx write error: %s", c->id, uv_strerror(rc));
        conn_close(c);
        return;
    }
    /* The socket buffer is full (rare: answers are tiny). Queue the rest;
     * wbuf stays untouched until the next request, which Postfix sends
     * only after it has read this answer. */
    size_t done = rc > 0 ? (size_t)rc : 0;
    b = uv_buf_init(c->wbuf + done, (unsigned)(n - done));
    c->write_req.data = c;
    c->writing = true;
    c->refs++;
    rc = uv_write(&c->write_req, &c->h.stream, &b, 1, conn_on_written);
    if (rc < 0) {
        c->writing = false;
        c->refs--;
        conn_close(c);
    }
}

static void conn_noop_reset(void *arg, int status)
{
    (void)arg;
    (void)status;
}

static void conn_side_effects(struct conn *c)
{
    const struct action_rule *ar = c->ev.decided;
    if (!ar || !ar->side_delete || c->store_failed)
        return;
    const char *keys[RULES_MAX_COUNTERS];
    size_t lens[RULES_MAX_COUNTERS];
    size_t n = 0;
    for (size_t i = 0; i < ar->n_delete; i++) {
        int u = c->ev.slot[ar->delete_counters[i]];
        if (u < 0)
            continue;
        keys[n] = c->ev.updates[u].key;
        lens[n] = c->ev.updates[u].key_len;
        n++;
    }
    if (n)
        store_reset(c->srv->store, keys, lens, n, conn_noop_reset, NULL);
}

/* conn_send - answer, record, side effects, then the next request. */
static void conn_send(struct conn *c)
{
    if (!c->closing)
        conn_write_answer(c);
    struct decision d = {
        .conn_id = c->id,
        .req_no = c->req_no,
        .rules = c->cfg->rules,
        .req = &c->req,
        .ev = &c->ev,
        .answer = c->answer,
        .store_failed = c->store_failed,
        .elapsed_ms = (double)(conn_now_ns() - c->started_ns) / 1e6,
    };
    actions_log(&d);
    conn_side_effects(c);
    c->srv->requests++;
    conn_finish(c);
}

static void conn_on_wait(uv_timer_t *t)
{
    conn_send(t->data);
}

/* conn_decided - the verdict is known; hold it back if the rule says so. */
static void conn_decided(struct conn *c)
{
    const struct action_rule *ar = c->ev.decided;
    if (ar && ar->wait > 0 && !c->closing) {
        uv_timer_start(&c->wait_timer, conn_on_wait, (uint64_t)(ar->wait * 1000), 0);
        return;
    }
    conn_send(c);
}

static void conn_answer_on_error(struct conn *c)
{
    c->store_failed = true;
    snprintf(c->answer, sizeof c->answer, "%s", c->cfg->on_error);
    log_warn_every(&c->srv->store_limiter, 60, "store %s unavailable: answering \"%s\"",
                   c->cfg->store.backend == STORE_BACKEND_REDIS ? c->cfg->store.redis_address : "memory",
                   c->cfg->on_error);
    conn_send(c);
}

static void conn_on_scores(void *arg, int status, const double *scores, size_t n, double now)
{
    (void)now;
    struct conn *c = arg;
    if (c->closing) {
        conn_unref(c);
        return;
    }
    c->refs--; /* cannot reach 0: the handles are open */
    if (status != STORE_OK) {
        conn_answer_on_error(c);
        return;
    }
    const struct rules *r = c->cfg->rules;
    rules_set_scores(r, &c->ev, scores, n);
    const struct action_rule *ar = rules_decide(r, &c->req, &c->ev);
    actions_format(r, ar, &c->req, &c->ev, c->answer, sizeof c->answer);
    conn_decided(c);
}

static void conn_noop_scores(void *arg, int status, const double *scores, size_t n, double now)
{
    (void)arg;
    (void)status;
    (void)scores;
    (void)n;
    (void)now;
}

/* conn_evaluate - rules for the request just parsed. */
static void conn_evaluate(struct conn *c)
{
    struct server *srv = c->srv;
    const struct rules *r = c->cfg->rules;
    c->store_failed = false;
    c->started_ns = conn_now_ns();
    if (rules_eval_points(r, &c->req, &c->ev)) {
        /* Whitelisted: answer now; what was counted before is stored
         * without waiting for it. */
        if (c->ev.n_updates)
            store_apply(srv->store, c->ev.updates, c->ev.n_updates, conn_noop_scores, NULL);
        snprintf(c->answer, sizeof c->answer, "%s",
                 c->ev.stopped_by->then == VERDICT_PERMIT ? "OK" : "DUNNO");
        conn_send(c);
        return;
    }
    if (c->ev.n_updates == 0) {
        /* No counter concerns this request: decide on attributes alone. */
        const struct action_rule *ar = rules_decide(r, &c->req, &c->ev);
        actions_format(r, ar, &c->req, &c->ev, c->answer, sizeof c->answer);
        conn_decided(c);
        return;
    }
    c->refs++;
    store_apply(srv->store, c->ev.updates, c->ev.n_updates, conn_on_scores, c);
}

/* conn_finish - forget the request, keep the bytes after it. */
static void conn_finish(struct conn *c)
{
    size_t rest = c->rlen - c->req_len;
    if (rest)
        memmove(c->rbuf, c->rbuf + c->req_len, rest);
    c->rlen = rest;
    c->req_len = 0;
    protocol_scan_reset(&c->scan);
    request_reset(&c->req);
    config_unref(c->cfg);
    c->cfg = NULL;
    c->busy = false;
    if (c->close_when_idle) {
        conn_close(c);
        return;
    }
    if (!c->in_process && !c->closing && c->rlen)
        conn_process(c);
    conn_update_reading(c);
}

static void conn_on_resume(uv_timer_t *t)
{
    conn_process(t->data);
}

/* conn_process - parse and start the requests waiting in the buffer.
 * Bounded per call so one busy connection cannot starve the others. */
static void conn_process(struct conn *c)
{
    struct server *srv = c->srv;
    c->in_process = true;
    int round;
    for (round = 0; round < 32 && !c->busy && !c->closing; round++) {
        const struct protocol_limits *lim = &srv->cfg->limits.protocol;
        size_t req_len = 0;
        const char *why = NULL;
        enum protocol_status st = protocol_scan(&c->scan, lim, c->rbuf, c->rlen, &req_len, &why);
        if (st == PROTOCOL_NEED_MORE)
            break;
        if (st == PROTOCOL_READY && protocol_parse(c->rbuf, req_len, &c->req, &why) < 0)
            st = PROTOCOL_ERROR;
        if (st == PROTOCOL_ERROR) {
            log_warn_every(&srv->proto_limiter, 10, "c=%lx peer=%s bad request: %s; closing", c->id,
                           c->peer, why ? why : "malformed");
            conn_close(c);
            break;
        }
        c->req_len = req_len;
        c->req_no++;
        c->busy = true;
        c->cfg = config_ref(srv->cfg);
        conn_evaluate(c);
    }
    c->in_process = false;
    /* A client that pipelines (Postfix does not, load generators may)
     * can leave whole requests behind the bound: come back on the next
     * loop turn rather than wait for bytes that may never come. */
    if (round == 32 && !c->busy && !c->closing && c->rlen)
        uv_timer_start(&c->wait_timer, conn_on_resume, 0, 0);
    conn_update_reading(c);
}
