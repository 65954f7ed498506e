/*
 * conn - one Postfix connection. See conn.h.
 *
 * The request cycle: read -> protocol_scan (incremental, limits checked
 * as bytes arrive) -> protocol_parse in place -> engine_start (points,
 * one store round trip, decision) -> answer (possibly held back by a
 * `wait`) -> engine_finish (log, side effects) -> drop the request's
 * bytes and look for the next one. Nothing here allocates per request: the read buffer,
 * the request arena, the eval state and the answer buffers are reused.
 */
#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "xalloc.h"

#define CONN_INITIAL_BUFFER 2048 /* bytes; a typical request is 500-900 */

static void conn_process(struct conn *c);
static void conn_on_wait(uv_timer_t *t);
static void conn_finish(struct conn *c);
static void conn_end_if_done(struct conn *c);

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
    metrics_own->connections_closed++;
    if (c->er) {
        engine_req_fini(c->er);
        free(c->er);
    }
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
    /* A decision held back by `wait` whose client went away: the wait
     * timer closes with the connection, so record it now (the log line,
     * the record, metrics, side effects), as a decision whose client
     * left during the store's round trip is. */
    if (c->holding) {
        c->holding = false;
        engine_finish(c->er, c->srv->store, c->id, c->req_no);
        c->srv->requests++;
    }
    log_debug("c=%lx closed after %lu requests", c->id, c->req_no);
    uv_close(&c->h.handle, conn_on_close);
    uv_close((uv_handle_t *)&c->idle_timer, conn_on_close);
    uv_close((uv_handle_t *)&c->wait_timer, conn_on_close);
}

void conn_shutdown(struct conn *c)
{
    if (!c->busy) {
        conn_close(c);
        return;
    }
    c->close_when_idle = true;
    /* An answer held back by `wait` goes out now rather than be lost. */
    if (c->holding)
        uv_timer_start(&c->wait_timer, conn_on_wait, 0, 0);
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
    protocol_scan_reset(&c->scan);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    metrics_own->connections_accepted++;
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
 * never does) can fill the buffer while a request is in flight (the
 * buffer may not move then: the request points into it) or while an
 * answer waits to be written: stop reading until there is room again,
 * then go on. Otherwise reading goes on: an unfinished request needs its
 * last bytes, up to the cap (a buffer at the cap and nearly full paused
 * too, and nothing resumed it: a request within 512 bytes of
 * max_request, or with max_request under ~1 kB every request but the
 * first, waited for the idle timeout). Past the cap, the scanner closes
 * the connection. */
static void conn_update_reading(struct conn *c)
{
    if (c->closing || c->eof)
        return;
    bool stuck = c->busy || c->writing; /* cannot grow or move now */
    bool full = stuck && c->rcap - c->rlen < 512;
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
    if (nread == UV_EOF && !c->closing) {
        /* Half-closed (printf ... | nc -N does it; Postfix does not): the
         * requests sent before are still answered, held ones included,
         * and then the connection closes. */
        c->eof = true;
        if (!c->busy && !c->writing)
            conn_process(c);
        conn_end_if_done(c);
        return;
    }
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
    /* While a request is in flight (held by wait, say) it is our turn,
     * not the client's: bytes sent ahead must not start the idle clock,
     * which would cut the held answer off. conn_finish restarts it. */
    if (!c->busy)
        conn_idle_restart(c);
    if (!c->busy && !c->writing)
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
    } else if (!c->closing && !c->busy) {
        /* The next request waited for this answer to leave. */
        if (c->rlen)
            conn_process(c);
        conn_update_reading(c);
        conn_end_if_done(c);
    }
    conn_unref(c);
}

static void conn_write_answer(struct conn *c)
{
    size_t alen = strlen(c->er->answer);
    size_t n = protocol_format_answer(c->wbuf, sizeof c->wbuf, c->er->answer, alen);
    if (n == 0) /* sizes are static: the answer always fits */
        log_panic("c=%lx answer does not fit: %zu bytes", c->id, alen);
    uv_buf_t b = uv_buf_init(c->wbuf, (unsigned)n);
    int rc = uv_try_write(&c->h.stream, &b, 1);
    if (rc == (int)n)
        return;
    if (rc < 0 && rc != UV_EAGAIN) {
        log_info("c=%lx write error: %s", c->id, uv_strerror(rc));
        conn_close(c);
        return;
    }
    /* The socket buffer is full: the client sends but does not read
     * (Postfix always reads). Queue the rest; no further request is
     * started until it is written (conn_process checks c->writing), so
     * wbuf and write_req stay ours until conn_on_written. */
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

/* conn_send - answer, let the engine record it and run the side
 * effects, then look at the next request. */
static void conn_send(struct conn *c)
{
    if (!c->closing)
        conn_write_answer(c);
    engine_finish(c->er, c->srv->store, c->id, c->req_no);
    c->srv->requests++;
    conn_finish(c);
}

static void conn_on_wait(uv_timer_t *t)
{
    struct conn *c = t->data;
    c->holding = false;
    conn_send(c);
}

/* conn_on_decided - the engine's verdict; hold it back if the rule says
 * so (a tarpit that blocks nothing else). */
static void conn_on_decided(struct engine_req *er, void *arg)
{
    (void)er;
    struct conn *c = arg;
    if (c->closing) {
        /* The connection went away while the store was asked: record
         * the decision all the same, then let go. */
        engine_finish(c->er, c->srv->store, c->id, c->req_no);
        conn_unref(c);
        return;
    }
    c->refs--; /* cannot reach 0: the handles are open */
    if (c->er->wait > 0) {
        c->holding = true;
        uv_timer_start(&c->wait_timer, conn_on_wait, (uint64_t)(c->er->wait * 1000), 0);
        return;
    }
    conn_send(c);
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
    c->busy = false;
    if (!c->closing)
        conn_idle_restart(c);
    if (c->close_when_idle) {
        conn_close(c);
        return;
    }
    if (!c->in_process && !c->closing && !c->writing && c->rlen)
        conn_process(c);
    conn_update_reading(c);
    if (!c->in_process)
        conn_end_if_done(c);
}

/* conn_end_if_done - a half-closed connection closes once nothing it
 * sent is left to answer: no request in flight, no answer being
 * written, no whole request waiting for the next loop turn (what is
 * left in the buffer can never be finished). */
static void conn_end_if_done(struct conn *c)
{
    if (c->eof && !c->closing && !c->busy && !c->writing &&
        !uv_is_active((uv_handle_t *)&c->wait_timer))
        conn_close(c);
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
    for (round = 0; round < 32 && !c->busy && !c->writing && !c->closing; round++) {
        const struct protocol_limits *lim = &srv->cfg->limits.protocol;
        size_t req_len = 0;
        const char *why = NULL;
        enum protocol_status st = protocol_scan(&c->scan, lim, c->rbuf, c->rlen, &req_len, &why);
        if (st == PROTOCOL_NEED_MORE)
            break;
        if (st == PROTOCOL_READY && !c->er) {
            /* The request state (~5 kB, most of it for 64 counters) is
             * made at a connection's first request and kept for the
             * rest: an idle connection costs little, a busy one
             * allocates nothing per request. */
            c->er = xmalloc(sizeof *c->er);
            engine_req_init(c->er);
        }
        if (st == PROTOCOL_READY && protocol_parse(c->rbuf, req_len, &c->er->req, &why) < 0)
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
        uv_timer_stop(&c->idle_timer); /* it is our turn, not the client's */
        c->refs++; /* until the engine calls back */
        c->er->dns = srv->dns;
        engine_start(c->er, srv->cfg, &srv->store, conn_on_decided, c);
    }
    c->in_process = false;
    /* A client that pipelines (Postfix does not, load generators may)
     * can leave whole requests behind the bound: come back on the next
     * loop turn rather than wait for bytes that may never come. */
    if (round == 32 && !c->busy && !c->writing && !c->closing && c->rlen)
        uv_timer_start(&c->wait_timer, conn_on_resume, 0, 0);
    conn_update_reading(c);
    conn_end_if_done(c);
}
