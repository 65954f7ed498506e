/*
 * respconn - a pipelined Redis connection on libuv (see the header).
 *
 * States: RESOLVING (uv_getaddrinfo, for a host name) -> CONNECTING ->
 * UP -> DEAD. Commands sent before UP wait in the output buffer. One
 * write is in flight at a time: what is sent meanwhile collects in the
 * other buffer, and the two are swapped when the write completes, so both
 * buffers are kept and reused. Reads go into one kept buffer and are fed
 * to hiredis's reader.
 *
 * Teardown (a socket error, EOF, a protocol error, or respconn_close):
 * the state becomes DEAD first, so a callback that sends again gets -EIO;
 * then every pending callback gets NULL, oldest first; then (not after
 * respconn_close) on_event. If that happens while replies are being
 * dispatched, it waits until the callback running returns. The memory
 * goes when libuv has closed the handle and no dispatch is running.
 */
#include "respconn.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "replyarena.h"
#include "xalloc.h"

#define RESPCONN_READ_BUF 65536     /* bytes read per read() at most */
#define RESPCONN_RING_MIN 64        /* pending commands before the ring first grows */

enum respconn_state {
    RC_RESOLVING,
    RC_CONNECTING,
    RC_UP,
    RC_DEAD
};

struct pending {
    respconn_reply_cb cb;
    void *arg;
};

struct outbuf {
    char *p;
    size_t len;
    size_t cap;
};

struct respconn {
    uv_loop_t *loop;            /* not owned */
    enum respconn_state state;  /* see enum */
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;                        /* the socket, once connecting */
    bool handle_open;           /* h was initialised and is not closed yet */
    uv_timer_t later;           /* a failure found inside respconn_send, reported from the loop */
    int handles;                /* of h and later, not closed yet */
    uv_getaddrinfo_t gai;       /* resolving a host name */
    bool gai_active;            /* gai is running */
    unsigned pick;              /* which of the name's addresses to try */
    uint64_t connect_started;   /* uv_now() when connecting began; 0 before */
    uv_connect_t creq;          /* the connect request */
    uv_write_t wreq;            /* the write in flight */
    bool writing;               /* wreq is in flight */
    struct outbuf out;          /* commands not yet written */
    struct outbuf wbuf;         /* the bytes of the write in flight */
    char *rbuf;                 /* read buffer, RESPCONN_READ_BUF bytes */
    redisReader *reader;        /* hiredis's parser */
    struct reply_arena *arena;  /* where the reader builds replies */

    struct pending *ring;       /* commands awaiting their replies, FIFO */
    size_t ring_cap;            /* entries in ring */
    size_t ring_head;           /* oldest */
    size_t ring_len;            /* entries in use */

    respconn_event_cb on_event; /* connected / failed */
    void *arg;                  /* the caller's */
    bool user_closed;           /* respconn_close was called: no more events */
    bool dispatching;           /* inside the reply loop */
    bool teardown_due;          /* teardown asked for during a dispatch */
    bool torn;                  /* the teardown ran (callbacks failed, handles closing) */
    char why[192];              /* of the teardown */
    bool freed_when_closed;     /* free in the close callback */
};

static void rc_teardown(struct respconn *rc, int status, const char *why);

/* --- output ------------------------------------------------------------ */

static void outbuf_reserve(struct outbuf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

/* put_header - "*N\r\n" or "$N\r\n" without snprintf. */
static void put_header(struct outbuf *b, char type, size_t n)
{
    char tmp[24];
    size_t k = 0;

    do {
        tmp[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    b->p[b->len++] = type;
    while (k)
        b->p[b->len++] = tmp[--k];
    b->p[b->len++] = '\r';
    b->p[b->len++] = '\n';
}

static void rc_on_write(uv_write_t *req, int status);

static void rc_on_later(uv_timer_t *t)
{
    struct respconn *rc = t->data;

    rc_teardown(rc, -EIO, rc->why);
}

/* rc_fail_later - a failure found where no callback may run (inside
 * respconn_open or respconn_send): sends fail from now on, and the
 * teardown runs from the loop. */
static void rc_fail_later(struct respconn *rc, const char *what, int err)
{
    snprintf(rc->why, sizeof rc->why, "%s: %s", what, uv_strerror(err));
    rc->state = RC_DEAD;
    uv_timer_start(&rc->later, rc_on_later, 0, 0);
}

/* rc_write - start a write of what is collected, unless one is in flight.
 * A failure is reported from the loop, never from inside respconn_send. */
static void rc_write(struct respconn *rc)
{
    if (rc->state != RC_UP || rc->writing || rc->out.len == 0)
        return;
    /* Swap: out becomes the write in flight, the old write buffer
     * collects what comes next. */
    struct outbuf t = rc->wbuf;
    rc->wbuf = rc->out;
    rc->out = t;
    rc->out.len = 0;
    uv_buf_t b = uv_buf_init(rc->wbuf.p, (unsigned)rc->wbuf.len);
    int err = uv_write(&rc->wreq, &rc->h.stream, &b, 1, rc_on_write);
    if (err < 0) {
        rc_fail_later(rc, "write", err);
        return;
    }
    rc->writing = true;
}

static void rc_on_write(uv_write_t *req, int status)
{
    struct respconn *rc = req->data;

    rc->writing = false;
    rc->wbuf.len = 0;
    if (status < 0) {
        if (rc->state != RC_DEAD) {
            char why[96];
            snprintf(why, sizeof why, "write: %s", uv_strerror(status));
            rc_teardown(rc, status, why);
        }
        return;
    }
    rc_write(rc);
}

/* --- pending ring ------------------------------------------------------ */

static void ring_push(struct respconn *rc, respconn_reply_cb cb, void *arg)
{
    if (rc->ring_len == rc->ring_cap) {
        size_t cap = rc->ring_cap ? rc->ring_cap * 2 : RESPCONN_RING_MIN;
        struct pending *ring = xmalloc(cap * sizeof *ring);
        for (size_t i = 0; i < rc->ring_len; i++)
            ring[i] = rc->ring[(rc->ring_head + i) % rc->ring_cap];
        free(rc->ring);
        rc->ring = ring;
        rc->ring_cap = cap;
        rc->ring_head = 0;
    }
    rc->ring[(rc->ring_head + rc->ring_len) % rc->ring_cap] = (struct pending){cb, arg};
    rc->ring_len++;
}

static struct pending ring_pop(struct respconn *rc)
{
    struct pending p = rc->ring[rc->ring_head];

    rc->ring_head = (rc->ring_head + 1) % rc->ring_cap;
    rc->ring_len--;
    return p;
}

/* --- teardown and freeing ---------------------------------------------- */

static void rc_free(struct respconn *rc)
{
    if (rc->reader)
        redisReaderFree(rc->reader);
    reply_arena_free(rc->arena);
    free(rc->out.p);
    free(rc->wbuf.p);
    free(rc->rbuf);
    free(rc->ring);
    free(rc);
}

static void rc_on_close(uv_handle_t *h)
{
    struct respconn *rc = h->data;

    if (h == &rc->h.handle)
        rc->handle_open = false;
    rc->handles--;
    if (rc->freed_when_closed && rc->handles == 0 && !rc->gai_active)
        rc_free(rc);
}

/* rc_release - the caller is done with rc and no callback of ours runs:
 * free it as soon as libuv has let go of every handle and request. */
static void rc_release(struct respconn *rc)
{
    rc->freed_when_closed = true;
    if (rc->handle_open && !uv_is_closing(&rc->h.handle))
        uv_close(&rc->h.handle, rc_on_close);
    if (!uv_is_closing((uv_handle_t *)&rc->later))
        uv_close((uv_handle_t *)&rc->later, rc_on_close);
    /* The memory goes in the last close callback (or when the name
     * lookup comes back, if that is later). */
}

/* rc_teardown - see the file comment. */
static void rc_teardown(struct respconn *rc, int status, const char *why)
{
    if (rc->torn)
        return;
    if (rc->dispatching) {
        if (!rc->teardown_due) {
            rc->teardown_due = true;
            if (why != rc->why)
                snprintf(rc->why, sizeof rc->why, "%s", why);
        }
        rc->state = RC_DEAD;
        return;
    }
    char reason[sizeof rc->why];
    snprintf(reason, sizeof reason, "%s", why);
    rc->torn = true;
    rc->state = RC_DEAD;
    if (rc->handle_open && !uv_is_closing(&rc->h.handle)) {
        uv_read_stop(&rc->h.stream);
        uv_close(&rc->h.handle, rc_on_close);
    }
    if (rc->gai_active)
        uv_cancel((uv_req_t *)&rc->gai);
    /* Callbacks may close rc (user_closed) or send (-EIO): both safe. */
    rc->dispatching = true;
    while (rc->ring_len > 0) {
        struct pending p = ring_pop(rc);
        p.cb(rc, NULL, p.arg);
    }
    rc->dispatching = false;
    if (!rc->user_closed) {
        rc->user_closed = true; /* one event at most */
        rc->on_event(rc, status < 0 ? status : -EIO, reason, rc->arg);
    }
    rc_release(rc);
}

/* --- input ------------------------------------------------------------- */

static void rc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct respconn *rc = h->data;

    (void)suggested;
    *buf = uv_buf_init(rc->rbuf, RESPCONN_READ_BUF);
}

static void rc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct respconn *rc = s->data;

    (void)buf;
    if (nread == 0 || rc->state == RC_DEAD)
        return;
    if (nread < 0) {
        char why[96];
        snprintf(why, sizeof why, "%s", nread == UV_EOF ? "closed by the server"
                                                        : uv_strerror((int)nread));
        rc_teardown(rc, (int)nread, why);
        return;
    }
    if (redisReaderFeed(rc->reader, rc->rbuf, (size_t)nread) != REDIS_OK) {
        rc_teardown(rc, -EPROTO, "out of memory in the reply reader");
        return;
    }
    rc->dispatching = true;
    while (!rc->teardown_due) {
        void *reply = NULL;
        if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {
            snprintf(rc->why, sizeof rc->why, "protocol error: %s", rc->reader->errstr);
            rc->teardown_due = true;
            break;
        }
        if (!reply)
            break;
        if (rc->ring_len == 0) {
            rc->reader->fn->freeObject(reply);
            snprintf(rc->why, sizeof rc->why, "a reply to no command");
            rc->teardown_due = true;
            break;
        }
        struct pending p = ring_pop(rc);
        p.cb(rc, reply, p.arg);
        rc->reader->fn->freeObject(reply);
    }
    rc->dispatching = false;
    if (rc->teardown_due) {
        rc->teardown_due = false;
        rc_teardown(rc, -EIO, rc->why);
    }
}

/* --- connecting -------------------------------------------------------- */

static void rc_on_connect(uv_connect_t *req, int status)
{
    struct respconn *rc = req->data;

    if (rc->state == RC_DEAD)
        return;
    if (status < 0) {
        char why[96];
        snprintf(why, sizeof why, "connect: %s", uv_strerror(status));
        rc_teardown(rc, status, why);
        return;
    }
    rc->state = RC_UP;
    int err = uv_read_start(&rc->h.stream, rc_alloc, rc_on_read);
    if (err < 0) {
        char why[96];
        snprintf(why, sizeof why, "read: %s", uv_strerror(err));
        rc_teardown(rc, err, why);
        return;
    }
    rc->on_event(rc, 0, "connected", rc->arg);
    if (rc->state == RC_UP)
        rc_write(rc);
}

static void rc_connect_addr(struct respconn *rc, const struct sockaddr *sa)
{
    int err = uv_tcp_init(rc->loop, &rc->h.tcp);

    if (err == 0) {
        rc->h.handle.data = rc;
        rc->handle_open = true;
        rc->handles++;
        uv_tcp_nodelay(&rc->h.tcp, 1);
        uv_tcp_keepalive(&rc->h.tcp, 1, 60);
        rc->state = RC_CONNECTING;
        rc->connect_started = uv_now(rc->loop);
        err = uv_tcp_connect(&rc->creq, &rc->h.tcp, sa, rc_on_connect);
    }
    if (err < 0)
        rc_fail_later(rc, "connect", err);
}

static void rc_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct respconn *rc = req->data;

    rc->gai_active = false;
    if (rc->state == RC_DEAD) {
        /* Closed meanwhile: the caller is gone. */
        uv_freeaddrinfo(res);
        if (rc->freed_when_closed && rc->handles == 0)
            rc_free(rc);
        return;
    }
    if (status < 0 || !res) {
        char why[128];
        snprintf(why, sizeof why, "cannot resolve: %s",
                 uv_strerror(status < 0 ? status : UV_EAI_NONAME));
        uv_freeaddrinfo(res);
        rc_teardown(rc, status < 0 ? status : -ENOENT, why);
        return;
    }
    size_t n = 0;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        n++;
    const struct addrinfo *a = res;
    for (size_t i = rc->pick % n; i > 0; i--)
        a = a->ai_next;
    rc_connect_addr(rc, a->ai_addr);
    uv_freeaddrinfo(res);
}

uint64_t respconn_connect_started(const struct respconn *rc)
{
    return rc->connect_started;
}

struct respconn *respconn_open(uv_loop_t *loop, const char *host, int port, const char *unix_path,
                               unsigned pick, respconn_event_cb on_event, void *arg)
{
    struct respconn *rc = xcalloc(1, sizeof *rc);

    rc->loop = loop;
    rc->on_event = on_event;
    rc->arg = arg;
    rc->pick = pick;
    rc->wreq.data = rc;
    rc->creq.data = rc;
    rc->gai.data = rc;
    rc->rbuf = xmalloc(RESPCONN_READ_BUF);
    rc->reader = redisReaderCreate();
    if (!rc->reader) {
        fprintf(stderr, "respconn: out of memory\n");
        abort();
    }
    rc->arena = reply_arena_new();
    reply_arena_attach(rc->arena, rc->reader);
    uv_timer_init(loop, &rc->later);
    rc->later.data = rc;
    rc->handles = 1;

    if (unix_path) {
        int err = uv_pipe_init(loop, &rc->h.pipe, 0);
        if (err == 0) {
            rc->h.handle.data = rc;
            rc->handle_open = true;
            rc->handles++;
            rc->state = RC_CONNECTING;
            rc->connect_started = uv_now(loop);
            uv_pipe_connect(&rc->creq, &rc->h.pipe, unix_path, rc_on_connect);
        } else {
            rc_fail_later(rc, "connect", err);
        }
        return rc;
    }

    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        rc->state = RC_CONNECTING;
        rc_connect_addr(rc, (const struct sockaddr *)&ss);
        return rc;
    }
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    rc->state = RC_RESOLVING;
    int err = uv_getaddrinfo(loop, &rc->gai, rc_on_resolved, host, service, &hints);
    if (err < 0) {
        rc_fail_later(rc, "cannot resolve", err);
    } else {
        rc->gai_active = true;
    }
    return rc;
}

int respconn_send(struct respconn *rc, int argc, const char *const *argv, const size_t *argvlen,
                  respconn_reply_cb cb, void *arg)
{
    size_t need = 32;

    if (rc->state == RC_DEAD || rc->user_closed || argc < 1)
        return -EIO;
    /* Counted in need: "*N\r\n", then "$LEN\r\n" ARG "\r\n" each: a
     * number has at most 20 digits, so 25 bytes besides the argument. */
    for (int i = 0; i < argc; i++)
        need += argvlen[i] + 32;
    outbuf_reserve(&rc->out, need);
    put_header(&rc->out, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        put_header(&rc->out, '$', argvlen[i]);
        memcpy(rc->out.p + rc->out.len, argv[i], argvlen[i]);
        rc->out.len += argvlen[i];
        rc->out.p[rc->out.len++] = '\r';
        rc->out.p[rc->out.len++] = '\n';
    }
    ring_push(rc, cb, arg);
    rc_write(rc);
    return 0;
}

void respconn_close(struct respconn *rc)
{
    /* No event after this; the teardown (now, or when the dispatch
     * running returns) fails what is pending. A second close, or one
     * from a callback of the teardown itself, changes nothing. */
    rc->user_closed = true;
    rc_teardown(rc, -ECANCELED, "closed");
}

size_t respconn_pending(const struct respconn *rc)
{
    return rc->ring_len;
}
