/*
 * redisaux - see redisaux.h.
 *
 * Shaped like store_redis.c, smaller: one hiredis async context on the
 * libuv adapter, our own connect timer, one deadline list (every command
 * has the same timeout, so deadlines are in sending order) under one
 * timer, reconnection with backoff, the disconnect callback forgets the
 * context. A command record lives until hiredis hands it back, even when
 * its caller was answered earlier by the deadline (the late reply is
 * dropped). A connection that owes replies and has sent none for two
 * timeouts is dropped (this also covers the 0.14.1 adapter ignoring
 * POLLERR).
 */
#include "redisaux.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "xalloc.h"

#define AUX_MAX_INFLIGHT 4096       /* commands hiredis holds at most */
#define AUX_BACKOFF_MIN_MS 100
#define AUX_BACKOFF_MAX_MS 5000
#define AUX_LOG_EVERY 60            /* seconds between repeated warnings */

struct aux_cmd {
    struct redisaux *ra;
    struct aux_cmd *prev, *next; /* deadline list, while the caller waits */
    redisaux_cb cb;             /* NULL: fire and forget */
    void *arg;
    uint64_t deadline_ms;       /* loop time */
    bool waiting;               /* on the deadline list */
};

struct redisaux {
    uv_loop_t *loop;
    char *address;              /* as configured, for logs */
    char *host;                 /* TCP host, or NULL */
    int port;
    char *unix_path;            /* or NULL */
    char *password;             /* NULL for none; never logged */
    int db;
    char db_s[16];              /* SELECT argument */
    unsigned timeout_ms;        /* per command and per connect */
    redisAsyncContext *ac;      /* NULL when down; hiredis frees it */
    bool up;                    /* SELECT answered */
    bool closing;
    unsigned backoff_ms;        /* next reconnection delay */
    uv_timer_t conn_timer;      /* backoff, or connect deadline */
    uv_timer_t deadline_timer;  /* for dl_head */
    int handles;                /* open handles */
    struct aux_cmd *dl_head, *dl_tail;
    size_t in_hiredis;          /* records hiredis holds */
    uint64_t owing_since_ms;    /* last reply, or first command owed */
    struct log_limiter lim;     /* connection problems */
};

static void aux_connect(struct redisaux *ra);

static void aux_dl_remove(struct redisaux *ra, struct aux_cmd *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        ra->dl_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        ra->dl_tail = c->prev;
    c->prev = c->next = NULL;
    c->waiting = false;
}

static void aux_on_backoff(uv_timer_t *t)
{
    aux_connect(t->data);
}

static void aux_down(struct redisaux *ra, const char *why)
{
    bool was_up = ra->up;
    ra->up = false;
    uv_timer_stop(&ra->conn_timer);
    if (ra->closing)
        return;
    log_warn_every(&ra->lim, AUX_LOG_EVERY, "redis %s (events/alerts): %s: %s", ra->address,
                   was_up ? "connection lost" : "cannot connect", why);
    uv_timer_start(&ra->conn_timer, aux_on_backoff, ra->backoff_ms, 0);
    ra->backoff_ms = ra->backoff_ms * 2 > AUX_BACKOFF_MAX_MS ? AUX_BACKOFF_MAX_MS : ra->backoff_ms * 2;
}

static void aux_drop(struct redisaux *ra, const char *why)
{
    redisAsyncContext *ac = ra->ac;
    if (!ac)
        return;
    ra->ac = NULL;
    aux_down(ra, why);
    redisAsyncFree(ac); /* every command's callback runs with NULL */
}

static void aux_on_connect(const redisAsyncContext *ac, int status)
{
    struct redisaux *ra = ac->data;
    if (status != REDIS_OK && ra->ac == ac) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr[0] ? ac->errstr : "connect failed");
        ra->ac = NULL;
        aux_down(ra, why);
    }
}

static void aux_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redisaux *ra = ac->data;
    if (ra->ac != ac)
        return;
    ra->ac = NULL;
    char why[128];
    snprintf(why, sizeof why, "%s", status == REDIS_OK ? "closed" : ac->errstr[0] ? ac->errstr : "error");
    aux_down(ra, why);
}

static void aux_on_select(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisaux *ra = privdata;
    redisReply *reply = r;
    if (!reply || ra->ac != ac)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char q[LOG_QUOTE_BUF], why[LOG_QUOTE_BUF + 32];
        snprintf(why, sizeof why, "SELECT failed: %s", log_quote(reply->str, reply->len, q, sizeof q));
        aux_drop(ra, why);
        return;
    }
    uv_timer_stop(&ra->conn_timer);
    ra->up = true;
    ra->backoff_ms = AUX_BACKOFF_MIN_MS;
    ra->owing_since_ms = uv_now(ra->loop);
}

static void aux_on_auth(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redisaux *ra = privdata;
    redisReply *reply = r;
    if (!reply || ra->ac != ac || reply->type != REDIS_REPLY_ERROR)
        return;
    if (strstr(reply->str, "without any password configured") ||
        strstr(reply->str, "no password is set"))
        return;
    char q[LOG_QUOTE_BUF], why[LOG_QUOTE_BUF + 32];
    snprintf(why, sizeof why, "authentication failed: %s", log_quote(reply->str, reply->len, q, sizeof q));
    aux_drop(ra, why);
}

static void aux_on_connect_timeout(uv_timer_t *t)
{
    struct redisaux *ra = t->data;
    aux_drop(ra, "no connection within the timeout");
}

static void aux_connect(struct redisaux *ra)
{
    if (ra->closing)
        return;
    redisAsyncContext *ac = ra->unix_path ? redisAsyncConnectUnix(ra->unix_path)
                                          : redisAsyncConnect(ra->host, ra->port);
    if (!ac) {
        aux_down(ra, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        aux_down(ra, why);
        return;
    }
    ac->data = ra;
    if (redisLibuvAttach(ac, ra->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        aux_down(ra, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, aux_on_connect);
    redisAsyncSetDisconnectCallback(ac, aux_on_disconnect);
    ra->ac = ac;
    if (ra->password) {
        const char *argv[2] = {"AUTH", ra->password};
        size_t len[2] = {4, strlen(ra->password)};
        redisAsyncCommandArgv(ac, aux_on_auth, ra, 2, argv, len);
    }
    const char *argv[2] = {"SELECT", ra->db_s};
    size_t len[2] = {6, strlen(ra->db_s)};
    redisAsyncCommandArgv(ac, aux_on_select, ra, 2, argv, len);
    uv_timer_start(&ra->conn_timer, aux_on_connect_timeout, ra->timeout_ms, 0);
}

static void aux_deadline_arm(struct redisaux *ra);

static void aux_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)ac;
    struct aux_cmd *c = privdata;
    struct redisaux *ra = c->ra;
    ra->in_hiredis--;
    if (r)
        ra->owing_since_ms = uv_now(ra->loop);
    if (c->waiting) {
        aux_dl_remove(ra, c);
        redisaux_cb cb = c->cb;
        void *arg = c->arg;
        free(c);
        cb(arg, r);
        return;
    }
    free(c);
}

static void aux_on_deadline(uv_timer_t *t)
{
    struct redisaux *ra = t->data;
    uint64_t now = uv_now(ra->loop);
    while (ra->dl_head && ra->dl_head->deadline_ms <= now && !ra->closing) {
        struct aux_cmd *c = ra->dl_head;
        aux_dl_remove(ra, c);
        /* hiredis still holds c: freed when it hands it back. */
        c->cb(c->arg, NULL);
    }
    if (ra->closing)
        return;
    if (ra->in_hiredis > 0 && now - ra->owing_since_ms >= 2 * (uint64_t)ra->timeout_ms)
        aux_drop(ra, "no reply within two timeouts");
    aux_deadline_arm(ra);
}

static void aux_deadline_arm(struct redisaux *ra)
{
    if (ra->closing)
        return;
    if (!ra->dl_head && ra->in_hiredis == 0) {
        uv_timer_stop(&ra->deadline_timer);
        return;
    }
    uint64_t now = uv_now(ra->loop);
    uint64_t at = ra->dl_head ? ra->dl_head->deadline_ms : ra->owing_since_ms + 2 * (uint64_t)ra->timeout_ms;
    uv_timer_start(&ra->deadline_timer, aux_on_deadline, at > now ? at - now : 0, 0);
}

int redisaux_command(struct redisaux *ra, int argc, const char **argv, const size_t *lens,
                     redisaux_cb cb, void *arg)
{
    if (ra->closing || !ra->up || !ra->ac ||
        (ra->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        return -ENOTCONN;
    if (ra->in_hiredis >= AUX_MAX_INFLIGHT)
        return -EAGAIN;
    struct aux_cmd *c = xcalloc(1, sizeof *c);
    c->ra = ra;
    c->cb = cb;
    c->arg = arg;
    if (redisAsyncCommandArgv(ra->ac, aux_on_reply, c, argc, argv, lens) != REDIS_OK) {
        free(c);
        return -ENOTCONN;
    }
    if (ra->in_hiredis++ == 0)
        ra->owing_since_ms = uv_now(ra->loop);
    if (cb) {
        c->waiting = true;
        c->deadline_ms = uv_now(ra->loop) + ra->timeout_ms;
        c->prev = ra->dl_tail;
        if (ra->dl_tail)
            ra->dl_tail->next = c;
        else
            ra->dl_head = c;
        ra->dl_tail = c;
    }
    if (ra->dl_head == c || !uv_is_active((uv_handle_t *)&ra->deadline_timer))
        aux_deadline_arm(ra);
    return 0;
}

bool redisaux_is_up(const struct redisaux *ra)
{
    return ra->up && !ra->closing;
}

static int aux_parse_address(struct redisaux *ra, const char *addr, char *err, size_t errlen)
{
    if (!strncmp(addr, "unix:", 5)) {
        if (addr[5] != '/')
            goto bad;
        ra->unix_path = xstrdup(addr + 5);
        return 0;
    }
    const char *port_s = NULL;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end == addr + 1 || (end[1] && end[1] != ':'))
            goto bad;
        ra->host = xstrndup(addr + 1, (size_t)(end - addr - 1));
        port_s = end[1] ? end + 2 : NULL;
    } else {
        const char *colon = strchr(addr, ':');
        if (!addr[0] || colon == addr || (colon && strchr(colon + 1, ':')))
            goto bad;
        ra->host = colon ? xstrndup(addr, (size_t)(colon - addr)) : xstrdup(addr);
        port_s = colon ? colon + 1 : NULL;
    }
    ra->port = 6379;
    if (port_s) {
        char *end;
        long p = strtol(port_s, &end, 10);
        if (!*port_s || *end || p < 1 || p > 65535)
            goto bad;
        ra->port = (int)p;
    }
    return 0;
bad:
    snprintf(err, errlen, "redis address \"%s\": want host:port, [v6]:port or unix:/path", addr);
    return -EINVAL;
}

static void aux_free(struct redisaux *ra)
{
    free(ra->address);
    free(ra->host);
    free(ra->unix_path);
    if (ra->password) {
        memset(ra->password, 0, strlen(ra->password));
        free(ra->password);
    }
    free(ra);
}

struct redisaux *redisaux_open(uv_loop_t *loop, const struct store_config *sc, char *err,
                               size_t errlen)
{
    struct redisaux *ra = xcalloc(1, sizeof *ra);
    ra->loop = loop;
    ra->address = xstrdup(sc->redis_address ? sc->redis_address : "127.0.0.1:6379");
    if (aux_parse_address(ra, ra->address, err, errlen) < 0) {
        aux_free(ra);
        return NULL;
    }
    if (sc->redis_password && sc->redis_password[0])
        ra->password = xstrdup(sc->redis_password);
    ra->db = sc->redis_db;
    snprintf(ra->db_s, sizeof ra->db_s, "%d", sc->redis_db);
    /* Nobody waits for these answers but the alert de-dup, which falls
     * back to local de-dup: a little more slack than the counters get. */
    ra->timeout_ms = sc->timeout_ms ? (sc->timeout_ms < 1000 ? 1000 : sc->timeout_ms) : 1000;
    ra->backoff_ms = AUX_BACKOFF_MIN_MS;
    uv_timer_init(loop, &ra->conn_timer);
    uv_timer_init(loop, &ra->deadline_timer);
    ra->conn_timer.data = ra->deadline_timer.data = ra;
    ra->handles = 2;
    aux_connect(ra);
    return ra;
}

bool redisaux_matches(const struct redisaux *ra, const struct store_config *sc)
{
    const char *addr = sc->redis_address ? sc->redis_address : "127.0.0.1:6379";
    const char *pw = sc->redis_password && sc->redis_password[0] ? sc->redis_password : NULL;
    return !strcmp(ra->address, addr) && ra->db == sc->redis_db &&
           ((!pw && !ra->password) || (pw && ra->password && !strcmp(pw, ra->password)));
}

static void aux_on_close(uv_handle_t *h)
{
    struct redisaux *ra = h->data;
    if (--ra->handles > 0)
        return;
    aux_free(ra);
}

void redisaux_close(struct redisaux *ra)
{
    if (!ra || ra->closing)
        return;
    /* Callers still waiting get their NULL now, from hiredis freeing the
     * context below; take them off the deadline list first so that they
     * are answered once. */
    ra->closing = true;
    ra->up = false;
    if (ra->ac) {
        redisAsyncContext *ac = ra->ac;
        ra->ac = NULL;
        redisAsyncFree(ac);
    }
    /* Anything left waiting was answered by the deadline already or is
     * owed by a context that is gone: answer it now. */
    while (ra->dl_head) {
        struct aux_cmd *c = ra->dl_head;
        aux_dl_remove(ra, c);
        c->cb(c->arg, NULL);
    }
    uv_close((uv_handle_t *)&ra->conn_timer, aux_on_close);
    uv_close((uv_handle_t *)&ra->deadline_timer, aux_on_close);
}
