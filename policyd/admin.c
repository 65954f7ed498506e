/*
 * admin - see admin.h.
 *
 * A tiny HTTP/1.x server: read until the end of the headers (and the
 * body, if Content-Length says there is one), answer once, close. That is
 * all smtpguardctl, curl and Prometheus need, and it keeps the parser
 * small enough to read in one go: request line, then "Name: value"
 * headers of which only Authorization and Content-Length matter.
 *
 * A connection holds one reference per open handle (socket, timer) and
 * one while a store callback is outstanding; it is freed when the last
 * goes. The timer bounds the whole exchange, store wait included.
 */
#define _GNU_SOURCE /* struct ucred, SO_PEERCRED */
#include "admin.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "alert.h"
#include "config.h"
#include "dns.h"
#include "followup.h"
#include "log.h"
#include "metrics.h"
#include "unixsock.h"
#include "record.h"
#include "server.h"
#include "textbuf.h"
#include "xalloc.h"

#ifndef SMTPGUARD_VERSION
#define SMTPGUARD_VERSION "0.1.0"
#endif

#define ADMIN_KEY_MAX 512           /* bytes of a key parameter */
#define ADMIN_TOP_DEFAULT 20        /* keys /top lists without n= */
#define ADMIN_LINGER_MS 2000        /* reading after the response, at most */

struct admin {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;                        /* the listening socket */
    struct server *srv;
    char *address;              /* as configured */
    bool is_pipe;
    struct unixsock_id sock;    /* the socket file made (is_pipe) */
    bool closing;
    struct admin_conn *conns;   /* open connections */
    unsigned n_conns;           /* how many */
    unsigned refs;              /* listener handle + connections */
    struct log_limiter lim;     /* refused / malformed requests */
};

struct admin_conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer;           /* bounds the whole exchange */
    struct admin *ad;
    struct admin_conn *prev, *next;
    unsigned refs;              /* handles + outstanding store call */
    bool closing;
    bool answered;              /* a response was queued */
    bool dispatched;            /* the request went to its endpoint (a store call may be out) */
    const char *allow;          /* a 405's Allow header: the route's method */
    bool peer_trusted;          /* unix peer is root or our user */
    char buf[ADMIN_MAX_REQUEST + 1]; /* request bytes, NUL-terminated */
    char drop[256];             /* what comes after a dispatched request, dropped */
    size_t len;                 /* bytes in buf */
    uv_write_t wr;
    uv_shutdown_t shut;         /* lingering close after the response */
    char *out;                  /* response being written */
    /* What an asynchronous answer needs. */
    char counter[METRICS_NAME_MAX]; /* counter name */
    char key[ADMIN_KEY_MAX + 80];   /* "name:value" */
    size_t key_len;                 /* bytes */
    int precision;                  /* of the counter */
};

static void admin_unref(struct admin *ad);

/* ---- small helpers ---- */

static int admin_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int admin_query_get(const char *query, size_t qlen, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *p = query, *end = query + qlen;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        if (eq && (size_t)(eq - p) == nlen && !memcmp(p, name, nlen)) {
            size_t o = 0;
            for (const char *v = eq + 1; v < pe; v++) {
                char c = *v;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    if (pe - v < 3)
                        return -2;
                    int hi = admin_hexval(v[1]), lo = admin_hexval(v[2]);
                    if (hi < 0 || lo < 0)
                        return -2;
                    c = (char)(hi * 16 + lo);
                    v += 2;
                }
                if (o + 1 >= cap || c == '\0')
                    return -2;
                out[o++] = c;
            }
            out[o] = '\0';
            return (int)o;
        }
        p = pe + 1;
    }
    return -1;
}

/* Response bodies: at most this many bytes (a top list of a few
 * thousand keys fits many times over). */
#define ADMIN_MAX_BODY (16u << 20)

/* ---- connection lifetime ---- */

static void admin_conn_unref(struct admin_conn *c)
{
    if (--c->refs > 0)
        return;
    struct admin *ad = c->ad;
    if (c->prev)
        c->prev->next = c->next;
    else
        ad->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ad->n_conns--;
    free(c->out);
    free(c);
    admin_unref(ad);
}

static void admin_conn_on_close(uv_handle_t *h)
{
    admin_conn_unref(h->data);
}

static void admin_conn_close(struct admin_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close(&c->h.handle, admin_conn_on_close);
    uv_close((uv_handle_t *)&c->timer, admin_conn_on_close);
}

static void admin_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    admin_conn_unref(req->data);
}

static void admin_on_linger(uv_timer_t *t)
{
    admin_conn_close(t->data);
}

/* admin_on_written - the response is out: half-close and read what the
 * client still sends until it closes (a bounded linger), so that closing
 * with unread bytes does not reset the connection before the client has
 * read the response (an oversized request, say). */
static void admin_on_written(uv_write_t *w, int status)
{
    struct admin_conn *c = w->data;
    if (status < 0 || c->closing) {
        admin_conn_close(c);
    } else {
        c->shut.data = c;
        c->refs++;
        if (uv_shutdown(&c->shut, &c->h.stream, admin_on_shutdown) < 0) {
            c->refs--;
            admin_conn_close(c);
        } else {
            uv_timer_start(&c->timer, admin_on_linger, ADMIN_LINGER_MS, 0);
        }
    }
    admin_conn_unref(c);
}

static const char *admin_reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* admin_respond - queue the response and close once written. body is
 * taken over (freed here). */
static void admin_respond(struct admin_conn *c, int code, const char *ctype, char *body,
                          const char *extra_header)
{
    if (c->answered || c->closing) {
        free(body);
        return;
    }
    c->answered = true;
    size_t blen = strlen(body);
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                      code, admin_reason(code), ctype, blen, extra_header ? extra_header : "");
    c->out = xmalloc((size_t)hl + blen + 1);
    memcpy(c->out, head, (size_t)hl);
    memcpy(c->out + hl, body, blen + 1);
    free(body);
    uv_buf_t b = uv_buf_init(c->out, (unsigned)((size_t)hl + blen));
    c->wr.data = c;
    c->refs++;
    if (uv_write(&c->wr, &c->h.stream, &b, 1, admin_on_written) < 0) {
        c->refs--;
        admin_conn_close(c);
    }
}

static void admin_json(struct admin_conn *c, int code, struct textbuf *b)
{
    textbuf_printf(b, "\n");
    admin_respond(c, code, "application/json", textbuf_take(b, NULL), NULL);
}

__attribute__((format(printf, 3, 4))) static void admin_error(struct admin_conn *c, int code,
                                                              const char *fmt, ...)
{
    /* A request refused before it was read whole (too large, malformed)
     * is an admin request too; dispatched ones were counted there. */
    if (!c->dispatched)
        metrics_own->admin_requests++;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct textbuf b;
    textbuf_init(&b, ADMIN_MAX_BODY);
    textbuf_printf(&b, "{\"error\":");
    textbuf_json_str(&b, msg, strlen(msg));
    textbuf_printf(&b, "}");
    admin_respond(c, code, "application/json", (textbuf_printf(&b, "\n"), textbuf_take(&b, NULL)),
                  code == 405 ? c->allow
                  : code == 401 ? "WWW-Authenticate: Bearer\r\n"
                                : NULL);
}

/* ---- endpoints ---- */

static void admin_health(struct admin_conn *c)
{
    admin_respond(c, 200, "text/plain; charset=utf-8", xstrdup("ok\n"), NULL);
}

static void admin_gauges(struct server *srv, struct metrics_gauges *g)
{
    g->start_time = srv->start_time;
    g->config_generation = srv->cfg->generation;
    g->store_up = srv->store && store_is_up(srv->store);
    g->store_backend = srv->store ? store_name(srv->store) : NULL;
    g->store_keys = -1;
    g->store_evictions = -1;
    g->dns = NULL;
    g->alerts = NULL;
    g->tracked_open = srv->cfg->tracking.enabled ? (long long)followup_track_open() : -1;
    if (srv->store && srv->cfg->store.backend == STORE_BACKEND_MEMORY) {
        size_t keys;
        unsigned long long evictions;
        store_memory_stats(srv->store, &keys, &evictions);
        g->store_keys = (long long)keys;
        g->store_evictions = (long long)(evictions + srv->evictions_before);
    }
}

static void admin_metrics(struct admin_conn *c)
{
    struct metrics_gauges g;
    struct dns_stats dns;
    struct alert_stats alerts;
    admin_gauges(c->ad->srv, &g);
    if (c->ad->srv->dns) {
        dns_stats_get(c->ad->srv->dns, &dns);
        g.dns = &dns;
    }
    if (followup_alert_stats(&alerts))
        g.alerts = &alerts;
    /* Every worker's counters (one part without workers). */
    const struct metrics *parts[CONFIG_MAX_WORKERS + 1];
    size_t n = metrics_parts(parts, CONFIG_MAX_WORKERS + 1);
    admin_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8",
                  metrics_format(parts, n, &g), NULL);
}

static double admin_wallclock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void admin_status(struct admin_conn *c)
{
    struct server *srv = c->ad->srv;
    struct metrics_gauges g;
    admin_gauges(srv, &g);
    struct textbuf b;
    textbuf_init(&b, ADMIN_MAX_BODY);
    textbuf_printf(&b, "{\"version\":\"%s\",\"uptime_seconds\":%.0f,\"config_generation\":%u,\"config\":",
              SMTPGUARD_VERSION, admin_wallclock() - srv->start_time, srv->cfg->generation);
    textbuf_json_str(&b, srv->cfg->path, strlen(srv->cfg->path));
    textbuf_printf(&b, ",\"store\":{\"backend\":\"%s\",\"up\":%s", g.store_backend ? g.store_backend : "none",
              g.store_up ? "true" : "false");
    if (g.store_keys >= 0)
        textbuf_printf(&b, ",\"keys\":%lld", g.store_keys);
    textbuf_printf(&b, "},\"connections\":%u,\"connections_total\":%llu,\"requests\":%lu,"
                  "\"recording\":%s,\"counters\":[",
              srv->n_conns, (unsigned long long)srv->next_conn_id, srv->requests,
              record_active() ? "true" : "false");
    const struct rules *r = srv->cfg->rules;
    for (size_t i = 0; i < r->n_counters; i++) {
        textbuf_printf(&b, i ? "," : "");
        textbuf_json_str(&b, r->counters[i].name, strlen(r->counters[i].name));
    }
    textbuf_printf(&b, "]}");
    admin_json(c, 200, &b);
}

/* admin_counter - find counter= in params; fills c->counter/precision.
 * Returns the counter or NULL (answered with an error). */
static const struct counter *admin_counter(struct admin_conn *c, const char *params, size_t plen)
{
    const struct rules *r = c->ad->srv->cfg->rules;
    if (admin_query_get(params, plen, "counter", c->counter, sizeof c->counter) <= 0) {
        admin_error(c, 400, "counter= is missing");
        return NULL;
    }
    int ci = rules_find_counter(r, c->counter, strlen(c->counter));
    if (ci < 0) {
        admin_error(c, 404, "no counter named \"%s\"", c->counter);
        return NULL;
    }
    c->precision = r->counters[ci].precision;
    return &r->counters[ci];
}

/* admin_key - "NAME:value" from key=, folded as the counter folds it. */
static bool admin_key(struct admin_conn *c, const struct counter *ct, const char *params,
                      size_t plen)
{
    char val[ADMIN_KEY_MAX];
    int n = admin_query_get(params, plen, "key", val, sizeof val);
    if (n <= 0) {
        admin_error(c, 400, "key= is missing or longer than %d bytes", ADMIN_KEY_MAX - 1);
        return false;
    }
    int o = snprintf(c->key, sizeof c->key, "%s:", ct->name);
    unsigned part = 0;
    for (int i = 0; i < n; i++) {
        char ch = val[i];
        if (ch == '|')
            part++;
        else if (part < ct->n_parts && ct->parts[part].v4_bits < 0 &&
                 attr_is_case_insensitive(ct->parts[part].attr) && ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        c->key[o++] = ch;
    }
    c->key[o] = '\0';
    c->key_len = (size_t)o;
    return true;
}

static void admin_on_score(void *arg, int status, const double *scores, size_t n, double now)
{
    (void)now;
    struct admin_conn *c = arg;
    if (status != STORE_OK || n != 1) {
        admin_error(c, 503, "the store did not answer");
    } else {
        size_t clen = strlen(c->counter);
        struct textbuf b;
        textbuf_init(&b, ADMIN_MAX_BODY);
        textbuf_printf(&b, "{\"counter\":");
        textbuf_json_str(&b, c->counter, clen);
        textbuf_printf(&b, ",\"key\":");
        textbuf_json_str(&b, c->key + clen + 1, c->key_len - clen - 1);
        textbuf_printf(&b, ",\"score\":%.*f,\"exact\":%.6f}", c->precision,
                  decay_round(scores[0], c->precision), scores[0]);
        admin_json(c, 200, &b);
    }
    admin_conn_unref(c);
}

static void admin_score(struct admin_conn *c, const char *params, size_t plen)
{
    const struct counter *ct = admin_counter(c, params, plen);
    if (!ct || !admin_key(c, ct, params, plen))
        return;
    struct store_update u = {.key = c->key, .key_len = c->key_len, .decay = ct->decay};
    c->refs++;
    store_peek(c->ad->srv->store, &u, 1, admin_on_score, c);
}

/* admin_key_escaped - a key with bytes JSON text cannot carry as they
 * are (controls, invalid UTF-8: "key" shows them as '?') or a backslash,
 * as "key_escaped": printable ASCII kept, every other byte and '\\' as
 * \xNN, the form the log uses; the bytes themselves can then be passed
 * back, e.g. with the shell's $'...' quoting. Nothing for a plain key. */
static void admin_key_escaped(struct textbuf *b, const char *key, size_t len)
{
    bool plain = true;
    for (size_t i = 0; i < len && plain; i++)
        plain = key[i] >= 0x20 && key[i] < 0x7f && key[i] != '\\';
    if (plain)
        return;
    char esc[4 * RULES_MAX_KEY + 1];
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < sizeof esc; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\')
            esc[o++] = (char)ch;
        else
            o += (size_t)snprintf(esc + o, sizeof esc - o, "\\x%02x", ch);
    }
    textbuf_printf(b, ",\"key_escaped\":");
    textbuf_json_str(b, esc, o);
}

static void admin_on_top(void *arg, int status, const struct store_top_entry *e, size_t n)
{
    struct admin_conn *c = arg;
    if (status != STORE_OK) {
        admin_error(c, 503, "the store did not answer");
    } else {
        size_t clen = strlen(c->counter);
        struct textbuf b;
        textbuf_init(&b, ADMIN_MAX_BODY);
        textbuf_printf(&b, "{\"counter\":");
        textbuf_json_str(&b, c->counter, clen);
        textbuf_printf(&b, ",\"keys\":[");
        for (size_t i = 0; i < n; i++) {
            size_t skip = e[i].key_len > clen ? clen + 1 : 0;
            textbuf_printf(&b, "%s{\"key\":", i ? "," : "");
            textbuf_json_str(&b, e[i].key + skip, e[i].key_len - skip);
            admin_key_escaped(&b, e[i].key + skip, e[i].key_len - skip);
            textbuf_printf(&b, ",\"score\":%.*f,\"exact\":%.6f}", c->precision,
                      decay_round(e[i].score, c->precision), e[i].score);
        }
        textbuf_printf(&b, "]}");
        admin_json(c, 200, &b);
    }
    admin_conn_unref(c);
}

static void admin_top(struct admin_conn *c, const char *params, size_t plen)
{
    const struct counter *ct = admin_counter(c, params, plen);
    if (!ct)
        return;
    char num[16];
    unsigned long n = ADMIN_TOP_DEFAULT;
    /* Absent: the default; present, it must be good (n=%zz, or 17
     * digits, answered the default as if absent). -2 leaves num unset. */
    int got = admin_query_get(params, plen, "n", num, sizeof num);
    if (got != -1) {
        char *end = num;
        n = got >= 0 ? strtoul(num, &end, 10) : 0;
        if (got <= 0 || *end || n < 1 || n > STORE_MAX_TOP) {
            admin_error(c, 400, "n= must be a number from 1 to %d", STORE_MAX_TOP);
            return;
        }
    }
    c->refs++;
    store_top(c->ad->srv->store, ct->name, &ct->decay, n, admin_on_top, c);
}

static void admin_on_reset(void *arg, int status)
{
    struct admin_conn *c = arg;
    if (status != STORE_OK) {
        admin_error(c, 503, "the store did not answer");
    } else {
        size_t clen = strlen(c->counter);
        struct textbuf b;
        textbuf_init(&b, ADMIN_MAX_BODY);
        textbuf_printf(&b, "{\"counter\":");
        textbuf_json_str(&b, c->counter, clen);
        textbuf_printf(&b, ",\"key\":");
        textbuf_json_str(&b, c->key + clen + 1, c->key_len - clen - 1);
        textbuf_printf(&b, ",\"reset\":true}");
        admin_json(c, 200, &b);
        char q[LOG_QUOTE_BUF];
        log_info("admin: reset %s", log_quote(c->key, c->key_len, q, sizeof q));
    }
    admin_conn_unref(c);
}

static void admin_reset(struct admin_conn *c, const char *params, size_t plen)
{
    const struct counter *ct = admin_counter(c, params, plen);
    if (!ct || !admin_key(c, ct, params, plen))
        return;
    const char *keys[1] = {c->key};
    size_t lens[1] = {c->key_len};
    c->refs++;
    store_reset(c->ad->srv->store, keys, lens, 1, admin_on_reset, c);
}

static void admin_reload(struct admin_conn *c)
{
    struct server *srv = c->ad->srv;
    log_info("admin: reload requested");
    int rc;
    if (log_worker >= 0) {
        /* workers: N: every worker must reload, so the parent does it
         * (SIGHUP: it checks the config and passes the signal on); here
         * the config is only checked, for the answer, which therefore
         * comes before the workers have reloaded. A refusal here never
         * reaches the supervisor, so it is counted here. */
        struct config_errors errs = {0};
        struct config *cfg = config_load(srv->cfg->path, &errs);
        rc = cfg ? 0 : -EINVAL;
        if (cfg && cfg->workers != srv->cfg->workers)
            rc = -EINVAL;
        if (cfg)
            config_unref(cfg);
        if (rc == 0) {
            kill(getppid(), SIGHUP);
        } else {
            log_error("admin: reload refused: the new configuration has errors or changes workers:");
            metrics_own->reload_refusals++;
        }
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msgs[i]);
        config_errors_fini(&errs);
        struct textbuf b;
        textbuf_init(&b, ADMIN_MAX_BODY);
        textbuf_printf(&b, "{\"reloaded\":%s,\"generation\":%u", rc == 0 ? "true" : "false",
                  srv->cfg->generation + (rc == 0));
        if (rc < 0)
            textbuf_printf(&b, ",\"error\":\"the new configuration was refused; the daemon log has "
                          "every problem, the old one keeps serving\"");
        textbuf_printf(&b, "}");
        admin_json(c, rc == 0 ? 200 : 500, &b);
        return;
    }
    rc = server_reload(srv);
    struct textbuf b;
    textbuf_init(&b, ADMIN_MAX_BODY);
    textbuf_printf(&b, "{\"reloaded\":%s,\"generation\":%u", rc == 0 ? "true" : "false",
              srv->cfg->generation);
    if (rc < 0)
        textbuf_printf(&b, ",\"error\":\"the new configuration was refused; the daemon log has every "
                      "problem, the old one keeps serving\"");
    textbuf_printf(&b, "}");
    admin_json(c, rc == 0 ? 200 : 500, &b);
}

/* ---- request handling ---- */

/* admin_timing_safe_equal - compare without leaking where they differ. */
static bool admin_timing_safe_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char d = alen != blen;
    for (size_t i = 0; i < alen; i++)
        d |= (unsigned char)(a[i] ^ b[i % (blen ? blen : 1)]);
    return d == 0;
}

/* admin_header - the value of a header (case-insensitive name) in the
 * header block, or NULL; *len its length without trailing blanks. */
static const char *admin_header(const char *headers, const char *end, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    for (const char *p = headers; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > nlen && !strncasecmp(p, name, nlen) && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *len = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* admin_authorized - may this request change state? Answers if not. */
static bool admin_authorized(struct admin_conn *c, const char *headers, const char *hend)
{
    const char *token = c->ad->srv->cfg->admin.token;
    size_t alen;
    const char *auth = admin_header(headers, hend, "Authorization", &alen);
    if (token && auth && alen > 7 && !strncasecmp(auth, "Bearer ", 7) &&
        admin_timing_safe_equal(auth + 7, alen - 7, token, strlen(token)))
        return true;
    if (c->peer_trusted)
        return true;
    if (token) {
        log_warn_every(&c->ad->lim, 60, "admin: state change refused: %s token",
                       auth ? "wrong" : "no");
        admin_error(c, 401, "this needs the admin token (Authorization: Bearer TOKEN)");
    } else {
        log_warn_every(&c->ad->lim, 60, "admin: state change refused: no token configured");
        admin_error(c, 403, "state changes need admin.token_file, or the unix socket");
    }
    return false;
}

/* admin_dispatch - a whole request is in buf[0..len); hlen bytes of it
 * are the request line and headers. */
static void admin_dispatch(struct admin_conn *c, size_t hlen)
{
    metrics_own->admin_requests++;
    char *line_end = memchr(c->buf, '\n', hlen);
    char *sp1 = memchr(c->buf, ' ', (size_t)(line_end - c->buf));
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        admin_error(c, 400, "expected \"METHOD /path HTTP/1.1\"");
        return;
    }
    size_t mlen = (size_t)(sp1 - c->buf);
    bool get = mlen == 3 && !memcmp(c->buf, "GET", 3);
    bool post = mlen == 4 && !memcmp(c->buf, "POST", 4);
    char *target = sp1 + 1;
    size_t tlen = (size_t)(sp2 - target);
    char *q = memchr(target, '?', tlen);
    size_t plen = q ? (size_t)(target + tlen - q - 1) : 0;
    size_t pathlen = q ? (size_t)(q - target) : tlen;

    /* Parameters: the query string, then an urlencoded body after it
     * ("&"-joined in place of the header block's end, which we no longer
     * need). */
    char params[ADMIN_MAX_REQUEST + 2];
    size_t pl = 0;
    if (q) {
        memcpy(params, q + 1, plen);
        pl = plen;
    }
    if (c->len > hlen) {
        params[pl++] = '&';
        memcpy(params + pl, c->buf + hlen, c->len - hlen);
        pl += c->len - hlen;
    }
    params[pl] = '\0';

    static const struct {
        const char *path;
        bool post;                  /* changes state */
    } routes[] = {{"/health", false}, {"/status", false}, {"/score", false}, {"/top", false},
                  {"/metrics", false}, {"/reset", true},  {"/reload", true}};
    int route = -1;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strlen(routes[i].path) == pathlen && !memcmp(target, routes[i].path, pathlen))
            route = (int)i;
    if (route < 0) {
        admin_error(c, 404, "no such endpoint (health, status, score, top, metrics, reset, reload)");
        return;
    }
    if (routes[route].post ? !post : !get) {
        c->allow = routes[route].post ? "Allow: POST\r\n" : "Allow: GET\r\n";
        admin_error(c, 405, "%s wants %s", routes[route].path, routes[route].post ? "POST" : "GET");
        return;
    }
    if (routes[route].post && !admin_authorized(c, line_end + 1, c->buf + hlen))
        return;
    switch (route) {
    case 0:
        admin_health(c);
        break;
    case 1:
        admin_status(c);
        break;
    case 2:
        admin_score(c, params, pl);
        break;
    case 3:
        admin_top(c, params, pl);
        break;
    case 4:
        admin_metrics(c);
        break;
    case 5:
        admin_reset(c, params, pl);
        break;
    default:
        admin_reload(c);
        break;
    }
}

/* admin_try - look for a whole request in the buffer. */
static void admin_try(struct admin_conn *c)
{
    c->buf[c->len] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    size_t hlen;
    if (end) {
        hlen = (size_t)(end - c->buf) + 4;
    } else if ((end = strstr(c->buf, "\n\n")) != NULL) {
        hlen = (size_t)(end - c->buf) + 2;
    } else {
        if (c->len >= ADMIN_MAX_REQUEST)
            admin_error(c, 413, "request too large (at most %d bytes)", ADMIN_MAX_REQUEST);
        else if (memchr(c->buf, '\0', c->len))
            admin_error(c, 400, "NUL byte in the request");
        return;
    }
    if (memchr(c->buf, '\0', c->len)) {
        admin_error(c, 400, "NUL byte in the request");
        return;
    }
    size_t cl_len;
    const char *cl = admin_header(c->buf, c->buf + hlen, "Content-Length", &cl_len);
    size_t body = 0;
    if (cl) {
        char num[24];
        char *e;
        if (cl_len == 0 || cl_len >= sizeof num) {
            admin_error(c, 400, "bad Content-Length");
            return;
        }
        memcpy(num, cl, cl_len);
        num[cl_len] = '\0';
        unsigned long long v = strtoull(num, &e, 10);
        if (*e || num[0] == '-') {
            admin_error(c, 400, "bad Content-Length");
            return;
        }
        if (v > ADMIN_MAX_REQUEST - hlen) {
            admin_error(c, 413, "request too large (at most %d bytes)", ADMIN_MAX_REQUEST);
            return;
        }
        body = (size_t)v;
    }
    if (c->len < hlen + body)
        return; /* the body is still coming */
    c->len = hlen + body;
    /* Once: bytes that come while a store call is out must not run the
     * same request again (a reset was done once per extra chunk). */
    c->dispatched = true;
    admin_dispatch(c, hlen);
}

static void admin_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct admin_conn *c = h->data;
    if (c->answered) /* lingering: what comes now is read and dropped */
        *buf = uv_buf_init(c->buf, ADMIN_MAX_REQUEST);
    else if (c->dispatched) /* the endpoint still reads buf: drop beside it */
        *buf = uv_buf_init(c->drop, sizeof c->drop);
    else
        *buf = uv_buf_init(c->buf + c->len, (unsigned)(ADMIN_MAX_REQUEST - c->len));
}

static void admin_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct admin_conn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        admin_conn_close(c);
        return;
    }
    if (c->answered || c->dispatched)
        return;
    c->len += (size_t)nread;
    admin_try(c);
    /* Full and still no whole request. One that was whole is being
     * carried out (score, top and reset answer later): no 413 then. */
    if (!c->answered && !c->dispatched && c->len >= ADMIN_MAX_REQUEST)
        admin_error(c, 413, "request too large (at most %d bytes)", ADMIN_MAX_REQUEST);
}

static void admin_on_timeout(uv_timer_t *t)
{
    struct admin_conn *c = t->data;
    log_warn_every(&c->ad->lim, 60, "admin: a connection timed out after %d ms",
                   ADMIN_TIMEOUT_MS);
    admin_conn_close(c);
}

/* admin_peer_trusted - a unix peer running as root or as us. */
static bool admin_peer_trusted(struct admin_conn *c)
{
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (uv_fileno(&c->h.handle, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return false;
    return cred.uid == 0 || cred.uid == getuid();
}

static void admin_on_connection(uv_stream_t *server_stream, int status)
{
    struct admin *ad = server_stream->data;
    if (status < 0)
        return;
    struct admin_conn *c = xcalloc(1, sizeof *c);
    c->ad = ad;
    if (ad->is_pipe)
        uv_pipe_init(server_stream->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(server_stream->loop, &c->h.tcp);
    uv_timer_init(server_stream->loop, &c->timer);
    c->h.handle.data = c;
    c->timer.data = c;
    c->refs = 2;
    ad->refs++;
    c->next = ad->conns;
    if (ad->conns)
        ad->conns->prev = c;
    ad->conns = c;
    ad->n_conns++;
    if (uv_accept(server_stream, &c->h.stream) != 0 || ad->closing) {
        admin_conn_close(c);
        return;
    }
    if (ad->n_conns > ADMIN_MAX_CONNS) {
        log_warn_every(&ad->lim, 60, "admin: refused a connection: %d open already",
                       ADMIN_MAX_CONNS);
        admin_conn_close(c);
        return;
    }
    c->peer_trusted = ad->is_pipe && admin_peer_trusted(c);
    uv_timer_start(&c->timer, admin_on_timeout, ADMIN_TIMEOUT_MS, 0);
    uv_read_start(&c->h.stream, admin_on_alloc, admin_on_read);
}

/* ---- the listener ---- */

static void admin_unref(struct admin *ad)
{
    if (--ad->refs > 0)
        return;
    free(ad->address);
    free(ad);
}

static void admin_on_close(uv_handle_t *h)
{
    admin_unref(h->data);
}

static int admin_bind(struct admin *ad, uv_loop_t *loop, const char *address)
{
    if (ad->is_pipe) {
        const char *path = address + 5;
        uv_pipe_init(loop, &ad->h.pipe, 0);
        /* The socket file's mode is the guard: owner and group only. */
        mode_t old = umask(0117);
        int rc = unixsock_pipe_open(&ad->h.pipe, path, &ad->sock);
        umask(old);
        return rc;
    }
    uv_tcp_init(loop, &ad->h.tcp);
    const char *colon = strrchr(address, ':');
    char host[64];
    size_t hlen = (size_t)(colon - address);
    if (address[0] == '[') {
        address++;
        hlen -= 2;
    }
    if (hlen >= sizeof host)
        return UV_EINVAL;
    memcpy(host, address, hlen);
    host[hlen] = '\0';
    struct sockaddr_storage ss;
    int port = atoi(colon + 1);
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc == 0)
        rc = uv_tcp_bind(&ad->h.tcp, (const struct sockaddr *)&ss, 0);
    return rc;
}

int admin_open(struct admin **out, struct server *srv, const char *address)
{
    struct admin *ad = xcalloc(1, sizeof *ad);
    ad->srv = srv;
    ad->address = xstrdup(address);
    ad->is_pipe = strncmp(address, "unix:", 5) == 0;
    ad->refs = 1;
    int rc = admin_bind(ad, srv->loop, address);
    ad->h.handle.data = ad;
    if (rc == 0)
        rc = uv_listen(&ad->h.stream, 64, admin_on_connection);
    if (rc < 0) {
        log_error("admin: cannot listen on %s: %s", address, uv_strerror(rc));
        uv_close(&ad->h.handle, admin_on_close);
        return rc;
    }
    log_info("admin API listening on %s%s", address,
             srv->cfg->admin.token ? " (token required for changes)" : "");
    *out = ad;
    return 0;
}

void admin_close(struct admin *ad)
{
    if (!ad || ad->closing)
        return;
    ad->closing = true;
    if (ad->is_pipe)
        unixsock_remove(ad->address + 5, &ad->sock);
    for (struct admin_conn *c = ad->conns; c; c = c->next)
        admin_conn_close(c);
    uv_close(&ad->h.handle, admin_on_close);
}

const char *admin_address(const struct admin *ad)
{
    return ad->address;
}
