/*
 * track - see track.h.
 *
 * Open records sit in two chained hash tables (by instance, and by
 * policy connection for "this connection moved on to another
 * transaction") and on one list ordered by last use, so that the idle
 * sweep and the eviction at the cap look at the list head only. Closed
 * records go to a ring of history pointers; the oldest is freed when
 * the ring turns. Bucket counts are powers of two sized from max_open.
 */
#include "track.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xalloc.h"

struct track {
    struct track_config cfg;
    track_emit_fn emit;
    void *emit_arg;
    struct track_msg **by_inst; /* [n_buckets] */
    struct track_msg **by_conn; /* [n_buckets] */
    size_t n_buckets;           /* power of two */
    struct track_msg *lru_head, *lru_tail; /* least recently used first */
    size_t n_open;
    struct track_msg **ring;    /* [cfg.history] closed records, or NULL */
    size_t ring_next;           /* slot the next closed record takes */
};

const char *track_status_name(enum track_status s)
{
    switch (s) {
    case TRACK_OPEN:
        return "open";
    case TRACK_COMPLETE:
        return "complete";
    case TRACK_ABORTED:
        return "aborted";
    }
    return "?";
}

static uint32_t track_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static size_t track_conn_slot(const struct track *t, unsigned long conn_id)
{
    return (size_t)(conn_id * 2654435761u) & (t->n_buckets - 1);
}

static char *track_dup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    return xstrndup(s, n > TRACK_FIELD_MAX ? TRACK_FIELD_MAX : n);
}

static void track_msg_free(struct track_msg *m)
{
    if (!m)
        return;
    free(m->instance);
    free(m->queue_id);
    free(m->client_address);
    free(m->client_name);
    free(m->helo_name);
    free(m->sasl_username);
    free(m->sender);
    for (size_t i = 0; i < m->n_rcpts; i++)
        free(m->rcpts[i]);
    for (size_t i = 0; i < m->n_keys; i++)
        free(m->keys[i]);
    for (size_t i = 0; i < m->n_rules; i++)
        free(m->rules[i]);
    for (size_t i = 0; i < m->n_verdicts; i++) {
        free(m->verdicts[i].state);
        free(m->verdicts[i].rule);
        free(m->verdicts[i].verdict);
        free(m->verdicts[i].recipient);
    }
    free(m);
}

static void track_buckets(struct track *t, size_t max_open)
{
    size_t n = 64;
    while (n < max_open && n < ((size_t)1 << 24))
        n *= 2;
    free(t->by_inst);
    free(t->by_conn);
    t->by_inst = xcalloc(n, sizeof *t->by_inst);
    t->by_conn = xcalloc(n, sizeof *t->by_conn);
    t->n_buckets = n;
    for (struct track_msg *m = t->lru_head; m; m = m->next) {
        size_t i = track_hash(m->instance) & (n - 1);
        m->inext = t->by_inst[i];
        t->by_inst[i] = m;
        size_t c = track_conn_slot(t, m->conn_id);
        m->cnext = t->by_conn[c];
        t->by_conn[c] = m;
    }
}

struct track *track_new(const struct track_config *cfg, track_emit_fn emit, void *arg)
{
    struct track *t = xcalloc(1, sizeof *t);
    t->cfg = *cfg;
    if (t->cfg.max_open == 0)
        t->cfg.max_open = 1;
    t->emit = emit;
    t->emit_arg = arg;
    track_buckets(t, t->cfg.max_open);
    if (t->cfg.history)
        t->ring = xcalloc(t->cfg.history, sizeof *t->ring);
    return t;
}

void track_free(struct track *t)
{
    if (!t)
        return;
    for (struct track_msg *m = t->lru_head, *next; m; m = next) {
        next = m->next;
        track_msg_free(m);
    }
    for (size_t i = 0; i < t->cfg.history; i++)
        track_msg_free(t->ring[i]);
    free(t->ring);
    free(t->by_inst);
    free(t->by_conn);
    free(t);
}

static void track_lru_unlink(struct track *t, struct track_msg *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        t->lru_head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        t->lru_tail = m->prev;
    m->prev = m->next = NULL;
}

static void track_lru_append(struct track *t, struct track_msg *m)
{
    m->prev = t->lru_tail;
    m->next = NULL;
    if (t->lru_tail)
        t->lru_tail->next = m;
    else
        t->lru_head = m;
    t->lru_tail = m;
}

/* track_conn_link / track_conn_unlink - an open record in or out of
 * the by-connection table, under m->conn_id. */
static void track_conn_link(struct track *t, struct track_msg *m)
{
    size_t c = track_conn_slot(t, m->conn_id);
    m->cnext = t->by_conn[c];
    t->by_conn[c] = m;
}

static void track_conn_unlink(struct track *t, struct track_msg *m)
{
    struct track_msg **pp = &t->by_conn[track_conn_slot(t, m->conn_id)];
    while (*pp && *pp != m)
        pp = &(*pp)->cnext;
    if (*pp)
        *pp = m->cnext;
    m->cnext = NULL;
}

/* track_unlink - take an open record out of both tables and the list. */
static void track_unlink(struct track *t, struct track_msg *m)
{
    struct track_msg **pp = &t->by_inst[track_hash(m->instance) & (t->n_buckets - 1)];
    while (*pp && *pp != m)
        pp = &(*pp)->inext;
    if (*pp)
        *pp = m->inext;
    m->inext = NULL;
    track_conn_unlink(t, m);
    track_lru_unlink(t, m);
    t->n_open--;
}

/* track_close - end an open record: emit it if wanted, keep it in the
 * history ring (or free it). */
static void track_close(struct track *t, struct track_msg *m, enum track_status status)
{
    track_unlink(t, m);
    m->status = status;
    if (m->wanted && t->emit)
        t->emit(t->emit_arg, m);
    if (!t->cfg.history) {
        track_msg_free(m);
        return;
    }
    track_msg_free(t->ring[t->ring_next]);
    t->ring[t->ring_next] = m;
    t->ring_next = (t->ring_next + 1) % t->cfg.history;
}

void track_configure(struct track *t, const struct track_config *cfg, double now)
{
    struct track_config c = *cfg;
    if (c.max_open == 0)
        c.max_open = 1;
    while (t->n_open > c.max_open)
        track_close(t, t->lru_head, TRACK_ABORTED);
    if (c.history != t->cfg.history) {
        /* Keep the newest records that fit, in order. */
        struct track_msg **ring = c.history ? xcalloc(c.history, sizeof *ring) : NULL;
        size_t kept = 0;
        for (size_t i = 0; i < t->cfg.history; i++) {
            size_t slot = (t->ring_next + i) % t->cfg.history; /* oldest first */
            struct track_msg *m = t->ring[slot];
            if (!m)
                continue;
            if (t->cfg.history - i > c.history) {
                track_msg_free(m);
                continue;
            }
            ring[kept++] = m;
        }
        free(t->ring);
        t->ring = ring;
        t->ring_next = c.history ? kept % c.history : 0;
    }
    bool rehash = c.max_open > t->n_buckets;
    t->cfg = c;
    if (rehash)
        track_buckets(t, c.max_open);
    track_expire(t, now, SIZE_MAX);
}

static struct track_msg *track_find(struct track *t, const char *instance)
{
    struct track_msg *m = t->by_inst[track_hash(instance) & (t->n_buckets - 1)];
    while (m && strcmp(m->instance, instance) != 0)
        m = m->inext;
    return m;
}

/* track_conn_current - the open record of a connection (at most one:
 * a new instance on a connection closes the previous one). */
static struct track_msg *track_conn_current(struct track *t, unsigned long conn_id)
{
    struct track_msg *m = t->by_conn[track_conn_slot(t, conn_id)];
    while (m && m->conn_id != conn_id)
        m = m->cnext;
    return m;
}

/* MAIL is left out on purpose: Postfix gives a transaction its instance
 * only once MAIL FROM has been accepted, so a request at the MAIL stage
 * (smtpd_delay_reject = no) still carries the previous transaction's
 * instance. Everything it says comes again with each RCPT. */
static bool track_state_tracked(const char *state)
{
    return state && (!strcmp(state, "RCPT") || !strcmp(state, "DATA") || !strcmp(state, "BDAT") ||
                     !strcmp(state, "END-OF-MESSAGE"));
}

static void track_set(char **field, const char *v)
{
    if (!v || !*v)
        return;
    if (*field && !strcmp(*field, v))
        return;
    free(*field);
    *field = track_dup(v);
}

static void track_add_rule(struct track_msg *m, const char *name)
{
    if (!name)
        return;
    for (size_t i = 0; i < m->n_rules; i++)
        if (!strcmp(m->rules[i], name))
            return;
    if (m->n_rules < TRACK_MAX_RULES)
        m->rules[m->n_rules++] = track_dup(name);
}

static void track_add_key(struct track_msg *m, const char *key, size_t len)
{
    if (len > TRACK_FIELD_MAX)
        len = TRACK_FIELD_MAX;
    for (size_t i = 0; i < m->n_keys; i++)
        if (strlen(m->keys[i]) == len && !memcmp(m->keys[i], key, len))
            return;
    if (m->n_keys < TRACK_MAX_KEYS)
        m->keys[m->n_keys++] = xstrndup(key, len);
}

static struct track_msg *track_open(struct track *t, const struct track_event *ev)
{
    /* A connection serves one transaction at a time. */
    struct track_msg *prev = track_conn_current(t, ev->conn_id);
    if (prev)
        track_close(t, prev, TRACK_ABORTED);
    if (t->n_open >= t->cfg.max_open)
        track_close(t, t->lru_head, TRACK_ABORTED);
    struct track_msg *m = xcalloc(1, sizeof *m);
    m->conn_id = ev->conn_id;
    m->instance = track_dup(ev->instance);
    m->start = ev->now;
    m->size = -1;
    m->recipient_count = -1;
    size_t i = track_hash(m->instance) & (t->n_buckets - 1);
    m->inext = t->by_inst[i];
    t->by_inst[i] = m;
    track_conn_link(t, m);
    track_lru_append(t, m);
    t->n_open++;
    return m;
}

/*
 * track_move_conn - m goes on with connection conn_id. Postfix's policy
 * client reconnects in the middle of a message (its connections have a
 * maximum idle time and age, and it retries after a timeout), and the
 * instance names one message of one smtpd process: the record follows
 * it to the new connection rather than be split into an "aborted" half
 * with the recipients and a "complete" half without them. That
 * connection's own open record, if another, ends as it would for a new
 * instance.
 */
static void track_move_conn(struct track *t, struct track_msg *m, unsigned long conn_id)
{
    struct track_msg *cur = track_conn_current(t, conn_id);
    if (cur && cur != m)
        track_close(t, cur, TRACK_ABORTED);
    track_conn_unlink(t, m);
    m->conn_id = conn_id;
    track_conn_link(t, m);
}

bool track_note(struct track *t, const struct track_event *ev)
{
    if (!track_state_tracked(ev->state) || !ev->instance || !*ev->instance)
        return false;
    struct track_msg *m = track_find(t, ev->instance);
    if (m && m->conn_id != ev->conn_id)
        track_move_conn(t, m, ev->conn_id);
    if (!m)
        m = track_open(t, ev);
    else {
        track_lru_unlink(t, m);
        track_lru_append(t, m);
    }
    m->last = ev->now;
    m->wanted |= ev->wanted;
    track_set(&m->queue_id, ev->queue_id);
    track_set(&m->client_address, ev->client_address);
    track_set(&m->client_name, ev->client_name);
    track_set(&m->helo_name, ev->helo_name);
    track_set(&m->sasl_username, ev->sasl_username);
    if (ev->sender && (!m->sender || *ev->sender)) {
        /* The null sender is a value here: "" stays "". */
        free(m->sender);
        m->sender = track_dup(ev->sender);
    }
    bool rcpt = !strcmp(ev->state, "RCPT");
    if (rcpt && ev->recipient && *ev->recipient) {
        if (ev->refused) {
            m->refused++;
        } else {
            m->rcpts_total++;
            if (m->n_rcpts < TRACK_MAX_RCPTS)
                m->rcpts[m->n_rcpts++] = track_dup(ev->recipient);
        }
    }
    for (size_t i = 0; i < ev->n_keys; i++)
        track_add_key(m, ev->keys[i], ev->key_lens[i]);
    for (size_t i = 0; i < ev->n_rules; i++)
        track_add_rule(m, ev->rules[i]);
    if (ev->rule && ev->verdict) {
        track_add_rule(m, ev->rule);
        if (m->n_verdicts < TRACK_MAX_VERDICTS) {
            struct track_verdict *v = &m->verdicts[m->n_verdicts++];
            v->state = track_dup(ev->state);
            v->rule = track_dup(ev->rule);
            v->verdict = track_dup(ev->verdict);
            v->recipient = rcpt ? track_dup(ev->recipient) : NULL;
        }
    }
    bool eom = !strcmp(ev->state, "END-OF-MESSAGE");
    if (eom || !strcmp(ev->state, "DATA")) {
        char *end;
        if (ev->recipient_count && *ev->recipient_count) {
            long n = strtol(ev->recipient_count, &end, 10);
            if (!*end && n >= 0)
                m->recipient_count = n;
        }
    }
    if (eom && ev->size && *ev->size) {
        /* Before END-OF-MESSAGE size is only what the client declared. */
        char *end;
        long long n = strtoll(ev->size, &end, 10);
        if (!*end && n >= 0)
            m->size = n;
    }
    if (eom)
        track_close(t, m, TRACK_COMPLETE);
    return true;
}

size_t track_expire(struct track *t, double now, size_t max)
{
    size_t n = 0;
    while (n < max && t->lru_head && t->lru_head->last + t->cfg.idle <= now) {
        track_close(t, t->lru_head, TRACK_ABORTED);
        n++;
    }
    return n;
}

size_t track_close_all(struct track *t)
{
    size_t n = 0;
    while (t && t->lru_head) {
        track_close(t, t->lru_head, TRACK_ABORTED);
        n++;
    }
    return n;
}

static bool track_has_key(const struct track_msg *m, const char *key, size_t len)
{
    for (size_t i = 0; i < m->n_keys; i++)
        if (strlen(m->keys[i]) == len && !memcmp(m->keys[i], key, len))
            return true;
    return false;
}

size_t track_recent(struct track *t, const char *key, size_t key_len,
                    const struct track_msg **out, size_t max)
{
    size_t n = 0;
    for (struct track_msg *m = t->lru_tail; m && n < max; m = m->prev)
        if (track_has_key(m, key, key_len))
            out[n++] = m;
    for (size_t i = 1; i <= t->cfg.history && n < max; i++) {
        const struct track_msg *m = t->ring[(t->ring_next + t->cfg.history - i) % t->cfg.history];
        if (!m)
            break;
        if (track_has_key(m, key, key_len))
            out[n++] = m;
    }
    return n;
}

size_t track_open_count(const struct track *t)
{
    return t->n_open;
}

static void track_json_field(struct textbuf *b, const char *name, const char *v)
{
    if (!v)
        return;
    textbuf_printf(b, ",\"%s\":", name);
    textbuf_json_str(b, v, strlen(v));
}

static void track_json_list(struct textbuf *b, const char *name, char *const *v, size_t n)
{
    textbuf_printf(b, ",\"%s\":[", name);
    for (size_t i = 0; i < n; i++) {
        if (i)
            textbuf_add(b, ",", 1);
        textbuf_json_str(b, v[i], strlen(v[i]));
    }
    textbuf_add(b, "]", 1);
}

void track_format_json(const struct track_msg *m, const char *host, struct textbuf *b)
{
    textbuf_printf(b, "{\"type\":\"message\",\"time\":%.3f,\"start\":%.3f,\"status\":\"%s\"",
                   m->last, m->start, track_status_name(m->status));
    track_json_field(b, "host", host);
    track_json_field(b, "instance", m->instance);
    track_json_field(b, "queue_id", m->queue_id);
    track_json_field(b, "client_address", m->client_address);
    track_json_field(b, "client_name", m->client_name);
    track_json_field(b, "helo_name", m->helo_name);
    track_json_field(b, "sasl_username", m->sasl_username);
    track_json_field(b, "sender", m->sender);
    track_json_list(b, "recipients", m->rcpts, m->n_rcpts);
    textbuf_printf(b, ",\"recipients_total\":%lu,\"refused\":%lu", m->rcpts_total, m->refused);
    if (m->recipient_count >= 0)
        textbuf_printf(b, ",\"recipient_count\":%ld", m->recipient_count);
    if (m->size >= 0)
        textbuf_printf(b, ",\"size\":%lld", m->size);
    textbuf_str(b, ",\"verdicts\":[");
    for (size_t i = 0; i < m->n_verdicts; i++) {
        const struct track_verdict *v = &m->verdicts[i];
        textbuf_str(b, i ? ",{\"state\":" : "{\"state\":");
        textbuf_json_str(b, v->state, strlen(v->state));
        textbuf_str(b, ",\"rule\":");
        textbuf_json_str(b, v->rule, strlen(v->rule));
        textbuf_str(b, ",\"verdict\":");
        textbuf_json_str(b, v->verdict, strlen(v->verdict));
        if (v->recipient) {
            textbuf_str(b, ",\"recipient\":");
            textbuf_json_str(b, v->recipient, strlen(v->recipient));
        }
        textbuf_add(b, "}", 1);
    }
    textbuf_add(b, "]", 1);
    track_json_list(b, "rules", m->rules, m->n_rules);
    track_json_list(b, "keys", m->keys, m->n_keys);
    textbuf_add(b, "}", 1);
}

void track_format_line(const struct track_msg *m, struct textbuf *b)
{
    char when[32];
    time_t secs = (time_t)m->start;
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%SZ", &tm);
    textbuf_printf(b, "%s %s from=<%s> to=", when, m->queue_id ? m->queue_id : "-",
                   m->sender ? m->sender : "");
    if (!m->n_rcpts)
        textbuf_str(b, "-");
    for (size_t i = 0; i < m->n_rcpts && i < 5; i++)
        textbuf_printf(b, "%s<%s>", i ? "," : "", m->rcpts[i]);
    if (m->rcpts_total > 5)
        textbuf_printf(b, ",... (%lu)", m->rcpts_total);
    if (m->refused)
        textbuf_printf(b, " refused=%lu", m->refused);
    if (m->size >= 0)
        textbuf_printf(b, " size=%lld", m->size);
    textbuf_printf(b, " %s", track_status_name(m->status));
    for (size_t i = 0; i < m->n_verdicts; i++) {
        const struct track_verdict *v = &m->verdicts[i];
        textbuf_printf(b, "%s%s %s by %s", i ? ", " : " (", v->state, v->verdict, v->rule);
        if (i + 1 == m->n_verdicts)
            textbuf_add(b, ")", 1);
    }
}
