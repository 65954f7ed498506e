/*
 * alert - see alert.h.
 *
 * State: the local de-dup table, the queue of composed mails (FIFO, each
 * with the loop time before which it is not tried), the one delivery in
 * progress (an smtpc, or a sendmail child with its stdin pipe and a
 * timer), the digest being collected, and the questions out to Redis.
 * Two timers: one wakes the queue for the next retry, one sends the
 * digest. Everything is freed in the close callbacks of those handles
 * once the delivery in progress (if any) has ended.
 */
#include "alert.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "dedup.h"
#include "log.h"
#include "smtpc.h"
#include "textbuf.h"
#include "xalloc.h"

#define ALERT_DEDUP_MAX 100000      /* (rule, key) pairs remembered */
#define ALERT_DIGEST_MAX 1000       /* alerts listed in one digest */
#define ALERT_MAIL_MAX (1 << 20)    /* bytes of one composed mail */
/* Bytes of a mail's text: quoted-printable makes up to 3 bytes of each
 * (and a soft line break per 75), so a quarter of the mail's cap always
 * fits whole; half of it, as it was, was cut inside an escape. */
#define ALERT_BODY_MAX (ALERT_MAIL_MAX / 4)
#define ALERT_LOG_EVERY 60          /* seconds between repeated warnings */

/* The de-dup question to Redis, one round trip:
 * KEYS[1] the interval's lock, KEYS[2] the count of suppressed alerts;
 * ARGV[1] this host, ARGV[2] the interval (s), ARGV[3] trips this host
 * suppressed and not yet counted there, ARGV[4] how long a count is kept.
 * Returns {1, suppressed, interval} to the host that wins the interval,
 * {0, 0, ttl} to the others (after adding their trips to the count). */
static const char alert_dedup_lua[] =
    "local pending = tonumber(ARGV[3])\n"
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then\n"
    "  local n = tonumber(redis.call('GET', KEYS[2]) or '0') + pending\n"
    "  redis.call('DEL', KEYS[2])\n"
    "  return {1, n, tonumber(ARGV[2])}\n"
    "end\n"
    "redis.call('INCRBY', KEYS[2], pending + 1)\n"
    "redis.call('EXPIRE', KEYS[2], ARGV[4])\n"
    "return {0, 0, redis.call('TTL', KEYS[1])}\n";

/* Trips this host suppressed, added to the shared count (KEYS[1]) so that
 * whichever host sends the next alert reports them. */
static const char alert_count_lua[] =
    "redis.call('INCRBY', KEYS[1], ARGV[1])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[2])\n";

#define ALERT_FLUSH_MS 1000         /* suppressed counts go to Redis this often */
#define ALERT_FLUSH_MAX 10000       /* keys per flush at most */

struct alert_mail {
    struct alert_mail *next;    /* queue */
    char *from;
    char **to;
    size_t n_to;
    char *data;                 /* the message, CRLF line ends */
    size_t len;                 /* bytes */
    char *what;                 /* "rule=R key=K" for logs */
    unsigned tries;             /* attempts made */
    uint64_t not_before_ms;     /* loop time of the next attempt */
    bool *temp_refused;         /* n_to: refused for now by the relay at the last try */
};

/* A sendmail run. */
struct alert_proc {
    uv_process_t proc;
    uv_pipe_t in;               /* its standard input */
    uv_timer_t timer;           /* kills it past the timeout */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    struct alert *a;
    char *buf;                  /* the message with LF line ends */
    int handles;                /* open handles */
    int64_t exit_status;        /* -1 until it exited */
    int term_signal;
    bool timed_out;
    bool exited;
};

/* A question out to Redis. */
struct alert_ask {
    struct alert *a;            /* NULL once the alerts closed: the answer is dropped */
    struct alert_ask *prev, *next; /* in a->asks */
    char *id;                   /* rule NUL key */
    size_t id_len;
    struct alert_info ai;
    unsigned long handover;     /* trips suppressed here, sent along */
};

struct alert {
    uv_loop_t *loop;
    char hostname[256];
    /* settings (copied from the config) */
    char *smtp;                 /* relay, or NULL */
    struct sockaddr_storage smtp_addr;
    char *sendmail;             /* or NULL */
    char *from;
    char **to;
    size_t n_to;
    char *helo;
    double every;               /* seconds */
    bool digest;
    char *subject, *body;
    unsigned timeout_ms;
    unsigned retries;
    double retry_delay;         /* seconds */
    unsigned queue_cap;         /* mails */
    struct redisaux *aux;       /* NULL: decide locally */
    char *prefix;               /* Redis key prefix */

    struct dedup *dedup;
    struct alert_mail *q_head, *q_tail;
    unsigned q_len;
    struct alert_mail *sending; /* delivery in progress */
    struct smtpc *smtpc;        /* ... by SMTP */
    struct alert_proc *proc;    /* ... by sendmail */
    struct alert_info *digest_items[ALERT_DIGEST_MAX];
    size_t n_digest;
    unsigned long digest_overflow; /* alerts that did not fit */
    struct alert_ask *asks;
    uv_timer_t queue_timer;     /* next retry */
    uv_timer_t digest_timer;    /* digest period */
    uv_timer_t flush_timer;     /* suppressed counts to Redis */
    int handles;                /* open handles of this struct */
    bool closing;
    unsigned long msgid_seq;    /* Message-ID counter */
    struct alert_stats stats;
    struct log_limiter lim_drop, lim_redis, lim_fail;
};

static void alert_kick(struct alert *a);

static void alert_mail_free(struct alert_mail *m)
{
    if (!m)
        return;
    free(m->from);
    for (size_t i = 0; i < m->n_to; i++)
        free(m->to[i]);
    free(m->to);
    free(m->data);
    free(m->what);
    free(m->temp_refused);
    free(m);
}

static void alert_settings_free(struct alert *a)
{
    free(a->smtp);
    free(a->sendmail);
    free(a->from);
    for (size_t i = 0; i < a->n_to; i++)
        free(a->to[i]);
    free(a->to);
    free(a->helo);
    free(a->subject);
    free(a->body);
    free(a->prefix);
    a->smtp = a->sendmail = a->from = a->helo = a->subject = a->body = a->prefix = NULL;
    a->to = NULL;
    a->n_to = 0;
}

static void alert_on_digest(uv_timer_t *t);
static void alert_on_flush(uv_timer_t *t);

struct alert *alert_new(uv_loop_t *loop)
{
    struct alert *a = xcalloc(1, sizeof *a);
    a->loop = loop;
    if (gethostname(a->hostname, sizeof a->hostname - 1) < 0 || !a->hostname[0])
        snprintf(a->hostname, sizeof a->hostname, "localhost");
    a->dedup = dedup_new(ALERT_DEDUP_MAX);
    uv_timer_init(loop, &a->queue_timer);
    uv_timer_init(loop, &a->digest_timer);
    uv_timer_init(loop, &a->flush_timer);
    a->queue_timer.data = a->digest_timer.data = a->flush_timer.data = a;
    a->handles = 3;
    return a;
}

const char *alert_hostname(const struct alert *a)
{
    return a->hostname;
}

void alert_configure(struct alert *a, const struct config_alerts *cfg, struct redisaux *aux,
                     const char *prefix)
{
    bool was_digest = a->digest;
    double was_every = a->every;
    alert_settings_free(a);
    a->smtp = cfg->smtp ? xstrdup(cfg->smtp) : NULL;
    if (a->smtp)
        smtpc_parse_address(a->smtp, &a->smtp_addr); /* checked by the config */
    a->sendmail = cfg->sendmail ? xstrdup(cfg->sendmail) : NULL;
    a->from = xstrdup(cfg->from ? cfg->from : "");
    a->to = xcalloc(cfg->n_to ? cfg->n_to : 1, sizeof *a->to);
    for (size_t i = 0; i < cfg->n_to; i++)
        a->to[i] = xstrdup(cfg->to[i]);
    a->n_to = cfg->n_to;
    a->helo = xstrdup(cfg->helo ? cfg->helo : a->hostname);
    a->every = cfg->every;
    a->digest = cfg->digest;
    a->subject = xstrdup(cfg->subject ? cfg->subject : alertmsg_default_subject);
    a->body = xstrdup(cfg->body ? cfg->body : alertmsg_default_body);
    a->timeout_ms = (unsigned)ceil(cfg->timeout * 1000);
    a->retries = cfg->retries;
    a->retry_delay = cfg->retry_delay;
    a->queue_cap = cfg->queue ? cfg->queue : 1;
    a->aux = aux;
    a->prefix = xstrdup(prefix ? prefix : "");
    if (aux && !uv_is_active((uv_handle_t *)&a->flush_timer)) {
        uv_timer_start(&a->flush_timer, alert_on_flush, ALERT_FLUSH_MS, ALERT_FLUSH_MS);
        uv_unref((uv_handle_t *)&a->flush_timer);
    } else if (!aux) {
        uv_timer_stop(&a->flush_timer);
    }
    if (a->digest && (!was_digest || was_every != a->every)) {
        uint64_t ms = (uint64_t)(a->every * 1000);
        uv_timer_start(&a->digest_timer, alert_on_digest, ms, ms);
    } else if (!a->digest && was_digest) {
        uv_timer_stop(&a->digest_timer);
        alert_on_digest(&a->digest_timer); /* what was collected goes out now */
    }
    alert_kick(a);
}

bool alert_check(struct alert *a, const char *rule, const char *key, double now,
                 unsigned long *handover)
{
    char id[1024];
    int n = snprintf(id, sizeof id, "%s%c%s", rule, '\0', key);
    if (n < 0)
        return false;
    size_t len = (size_t)n < sizeof id ? (size_t)n : sizeof id - 1;
    if (dedup_trip(a->dedup, id, len, now, handover) == DEDUP_PROCEED)
        return true;
    a->stats.suppressed++;
    return false;
}

/* ---- delivery ---- */

/* alert_keep_refused - after a delivery that some recipients refused
 * for now (4xx): m keeps only those, to be tried again. Returns how many. */
static size_t alert_keep_refused(struct alert_mail *m)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n_to; i++) {
        if (m->temp_refused && m->temp_refused[i])
            m->to[k++] = m->to[i];
        else
            free(m->to[i]);
    }
    m->n_to = k;
    return k;
}

static void alert_done(struct alert *a, int status, const char *detail)
{
    struct alert_mail *m = a->sending;
    a->sending = NULL;
    char q[LOG_QUOTE_BUF];
    const char *via = a->smtp ? a->smtp : a->sendmail ? a->sendmail : "-";
    if (status == 0) {
        a->stats.sent++;
        size_t first = 0; /* a recipient that took it */
        while (m->temp_refused && first + 1 < m->n_to && m->temp_refused[first])
            first++;
        log_info("alert %s sent to %s via %s: %s", m->what, m->to[first], via,
                 log_quote(detail, strlen(detail), q, sizeof q));
        /* Taken for some recipients, refused for now for others: those
         * are tried again, as a mail refused for now would be. */
        if (!a->closing && alert_keep_refused(m) > 0) {
            status = -EAGAIN;
            detail = "refused for now by some recipients";
        } else {
            alert_mail_free(m);
            alert_kick(a);
            return;
        }
    }
    if (status == -ECANCELED || a->closing) {
        alert_mail_free(m);
    } else if (status == -EAGAIN && m->tries <= a->retries) {
        double delay = a->retry_delay * pow(2, m->tries - 1);
        if (delay > 86400)
            delay = 86400;
        m->not_before_ms = uv_now(a->loop) + (uint64_t)(delay * 1000);
        log_warn_every(&a->lim_fail, ALERT_LOG_EVERY,
                       "alert %s via %s failed (try %u of %u), retrying in %.3gs: %s", m->what,
                       via, m->tries, a->retries + 1, delay,
                       log_quote(detail, strlen(detail), q, sizeof q));
        m->next = NULL;
        if (a->q_tail)
            a->q_tail->next = m;
        else
            a->q_head = m;
        a->q_tail = m;
        a->q_len++;
    } else {
        a->stats.failed++;
        log_error("alert %s via %s given up after %u tries: %s", m->what, via, m->tries,
                  log_quote(detail, strlen(detail), q, sizeof q));
        alert_mail_free(m);
    }
    alert_kick(a);
}

static void alert_on_smtp(void *arg, int status, const char *detail)
{
    struct alert *a = arg;
    a->smtpc = NULL;
    alert_done(a, status, detail);
    if (a->closing)
        alert_close(a); /* it waited for this delivery */
}

static void alert_proc_closed(uv_handle_t *h)
{
    struct alert_proc *p = h->data;
    if (--p->handles > 0)
        return;
    struct alert *a = p->a;
    char detail[128];
    int status;
    if (p->timed_out) {
        snprintf(detail, sizeof detail, "no exit within %u ms (killed)", a->timeout_ms);
        status = -EAGAIN;
    } else if (!p->exited) {
        snprintf(detail, sizeof detail, "could not run");
        status = -EAGAIN;
    } else if (p->term_signal) {
        snprintf(detail, sizeof detail, "killed by signal %d", p->term_signal);
        status = -EAGAIN;
    } else {
        snprintf(detail, sizeof detail, "exit status %lld", (long long)p->exit_status);
        /* sysexits.h EX_TEMPFAIL: try again later. */
        status = p->exit_status == 0 ? 0 : p->exit_status == 75 ? -EAGAIN : -EPERM;
    }
    free(p->buf);
    free(p);
    a->proc = NULL;
    alert_done(a, status, detail);
    if (a->closing)
        alert_close(a);
}

static void alert_proc_close(struct alert_proc *p)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&p->proc, (uv_handle_t *)&p->in, (uv_handle_t *)&p->timer};
    for (size_t i = 0; i < 3; i++)
        if (!uv_is_closing(hs[i]))
            uv_close(hs[i], alert_proc_closed);
}

static void alert_on_exit(uv_process_t *proc, int64_t status, int term_signal)
{
    struct alert_proc *p = proc->data;
    p->exited = true;
    p->exit_status = status;
    p->term_signal = term_signal;
    alert_proc_close(p);
}

static void alert_on_proc_timeout(uv_timer_t *t)
{
    struct alert_proc *p = t->data;
    if (p->exited)
        return;
    p->timed_out = true;
    /* Our own child and whatever it started (a real sendmail leaves its
     * postdrop behind), by the process group it leads; its exit callback
     * closes the rest. */
    kill(-p->proc.pid, SIGKILL);
}

static void alert_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void alert_on_pipe_write(uv_write_t *req, int status)
{
    struct alert_proc *p = req->data;
    if (status < 0)
        return; /* it exited early; its exit status tells */
    if (!uv_is_closing((uv_handle_t *)&p->in))
        uv_shutdown(&p->sreq, (uv_stream_t *)&p->in, alert_on_shutdown);
}

static void alert_start_sendmail(struct alert *a, struct alert_mail *m)
{
    struct alert_proc *p = xcalloc(1, sizeof *p);
    p->a = a;
    p->exit_status = -1;
    /* Local submission wants local line ends. */
    p->buf = xmalloc(m->len + 1);
    size_t n = 0;
    for (size_t i = 0; i < m->len; i++)
        if (!(m->data[i] == '\r' && i + 1 < m->len && m->data[i + 1] == '\n'))
            p->buf[n++] = m->data[i];
    char **args = xcalloc(m->n_to + 7, sizeof *args);
    size_t k = 0;
    args[k++] = a->sendmail;
    args[k++] = (char *)"-i";
    args[k++] = (char *)"-f";
    args[k++] = m->from;
    args[k++] = (char *)"--";
    for (size_t i = 0; i < m->n_to; i++)
        args[k++] = m->to[i];
    args[k] = NULL;
    uv_pipe_init(a->loop, &p->in, 0);
    uv_timer_init(a->loop, &p->timer);
    p->in.data = p->timer.data = p->proc.data = p->wreq.data = p;
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&p->in},
        {.flags = UV_IGNORE},
        {.flags = UV_INHERIT_FD, .data.fd = 2},
    };
    uv_process_options_t opt = {
        .exit_cb = alert_on_exit,
        .file = a->sendmail,
        .args = args,
        .stdio_count = 3,
        .stdio = stdio,
        /* A session and process group of its own (setsid), so that a
         * timeout ends its children too, not only the process we ran. */
        .flags = UV_PROCESS_DETACHED,
    };
    a->proc = p;
    p->handles = 2;
    int rc = uv_spawn(a->loop, &p->proc, &opt);
    free(args);
    if (rc < 0) {
        char q[LOG_QUOTE_BUF];
        log_warn_every(&a->lim_fail, ALERT_LOG_EVERY, "alert: cannot run %s: %s",
                       log_quote(a->sendmail, strlen(a->sendmail), q, sizeof q), uv_strerror(rc));
        /* uv_spawn failed: the process handle still needs closing. */
        p->handles = 3;
        alert_proc_close(p);
        return;
    }
    p->handles = 3;
    uv_timer_start(&p->timer, alert_on_proc_timeout, a->timeout_ms, 0);
    uv_buf_t b = uv_buf_init(p->buf, (unsigned)n);
    if (uv_write(&p->wreq, (uv_stream_t *)&p->in, &b, 1, alert_on_pipe_write) < 0)
        uv_close((uv_handle_t *)&p->in, alert_proc_closed);
}

static void alert_on_queue_timer(uv_timer_t *t)
{
    alert_kick(t->data);
}

/* alert_kick - start the next delivery that is due, or wake up when one
 * will be. */
static void alert_kick(struct alert *a)
{
    if (a->closing || a->sending || (!a->smtp && !a->sendmail))
        return;
    uint64_t now = uv_now(a->loop), next = UINT64_MAX;
    struct alert_mail *prev = NULL, *m = a->q_head;
    while (m && m->not_before_ms > now) {
        if (m->not_before_ms < next)
            next = m->not_before_ms;
        prev = m;
        m = m->next;
    }
    if (!m) {
        if (next != UINT64_MAX)
            uv_timer_start(&a->queue_timer, alert_on_queue_timer, next - now, 0);
        return;
    }
    if (prev)
        prev->next = m->next;
    else
        a->q_head = m->next;
    if (a->q_tail == m)
        a->q_tail = prev;
    a->q_len--;
    m->next = NULL;
    m->tries++;
    a->sending = m;
    if (a->smtp) {
        free(m->temp_refused);
        m->temp_refused = xcalloc(m->n_to ? m->n_to : 1, sizeof *m->temp_refused);
        struct smtpc_job job = {
            .helo = a->helo, .from = m->from, .to = m->to, .n_to = m->n_to,
            .data = m->data, .len = m->len, .temp_refused = m->temp_refused,
        };
        a->smtpc = smtpc_start(a->loop, (const struct sockaddr *)&a->smtp_addr, &job,
                               a->timeout_ms, alert_on_smtp, a);
    } else {
        alert_start_sendmail(a, m);
    }
}

static void alert_enqueue(struct alert *a, char *data, size_t len, const char *what)
{
    if (a->q_len >= a->queue_cap) {
        a->stats.dropped++;
        log_warn_every(&a->lim_drop, ALERT_LOG_EVERY,
                       "alert %s dropped: %u mails already wait (alerts.queue)", what, a->q_len);
        free(data);
        return;
    }
    struct alert_mail *m = xcalloc(1, sizeof *m);
    m->from = xstrdup(a->from);
    m->to = xcalloc(a->n_to ? a->n_to : 1, sizeof *m->to);
    for (size_t i = 0; i < a->n_to; i++)
        m->to[i] = xstrdup(a->to[i]);
    m->n_to = a->n_to;
    m->data = data;
    m->len = len;
    m->what = xstrdup(what);
    m->not_before_ms = 0;
    if (a->q_tail)
        a->q_tail->next = m;
    else
        a->q_head = m;
    a->q_tail = m;
    a->q_len++;
    alert_kick(a);
}

/* alert_compose - the message for subject and body text. */
static char *alert_compose(struct alert *a, const char *subject, const char *body, size_t body_len,
                           size_t *len)
{
    char msgid[384];
    snprintf(msgid, sizeof msgid, "%lld.%lu.%ld.smtpguard@%s", (long long)time(NULL),
             ++a->msgid_seq, (long)getpid(), a->hostname);
    struct alertmsg_head h = {
        .from = a->from, .to = a->to, .n_to = a->n_to, .subject = subject,
        .date = time(NULL), .message_id = msgid,
    };
    struct textbuf out;
    textbuf_init(&out, ALERT_MAIL_MAX);
    alertmsg_format(&h, body, body_len, &out);
    return textbuf_take(&out, len);
}

/* alert_send_one - compose and queue the mail for one alert. */
static void alert_send_one(struct alert *a, struct alert_info *ai)
{
    struct textbuf subj, body;
    textbuf_init(&subj, 900);
    textbuf_init(&body, ALERT_BODY_MAX);
    alertmsg_expand(a->subject, ai, 1, &subj);
    alertmsg_expand(a->body, ai, 0, &body);
    size_t len;
    char *data = alert_compose(a, textbuf_cstr(&subj), textbuf_cstr(&body), body.len, &len);
    char what[600], qk[LOG_QUOTE_BUF];
    /* The key holds a peer's value: one token in the log lines. */
    snprintf(what, sizeof what, "rule=%s key=%s", ai->rule ? ai->rule : "-",
             ai->key ? log_quote_field(ai->key, strlen(ai->key), qk, sizeof qk) : "-");
    alert_enqueue(a, data, len, what);
    textbuf_fini(&subj);
    textbuf_fini(&body);
}

static void alert_on_digest(uv_timer_t *t)
{
    struct alert *a = t->data;
    if (!a->n_digest)
        return;
    struct alert_info head = {
        .hostname = a->hostname,
        .time = (double)time(NULL),
        .count = a->n_digest + a->digest_overflow,
    };
    struct textbuf subj, body;
    textbuf_init(&subj, 900);
    textbuf_init(&body, ALERT_BODY_MAX);
    alertmsg_expand(alertmsg_default_digest_subject, &head, 1, &subj);
    textbuf_printf(&body, "smtpguard on %s: %zu alerts in the last %.0f seconds", a->hostname,
                   a->n_digest + a->digest_overflow, a->every);
    if (a->digest_overflow)
        textbuf_printf(&body, " (%lu more not listed)", a->digest_overflow);
    textbuf_str(&body, ".\n");
    /* Each entry whole or not at all, and the mail says how many did not
     * fit (they were cut off silently, the last one in the middle). */
    struct textbuf item;
    size_t listed = 0;
    textbuf_init(&item, ALERT_BODY_MAX);
    for (size_t i = 0; i < a->n_digest; i++) {
        textbuf_reset(&item);
        textbuf_str(&item, "\n------------------------------------------------------------\n");
        alertmsg_expand(a->body, a->digest_items[i], 0, &item);
        if (!item.truncated && body.len + item.len + 128 <= ALERT_BODY_MAX) {
            textbuf_add(&body, item.p, item.len);
            listed++;
        }
        alert_info_free(a->digest_items[i]);
        free(a->digest_items[i]);
    }
    textbuf_fini(&item);
    if (listed < a->n_digest)
        textbuf_printf(&body, "\n(%zu more not listed: the mail's size limit)\n",
                       a->n_digest - listed);
    size_t n = a->n_digest;
    a->n_digest = 0;
    a->digest_overflow = 0;
    size_t len;
    char *data = alert_compose(a, textbuf_cstr(&subj), textbuf_cstr(&body), body.len, &len);
    char what[64];
    snprintf(what, sizeof what, "digest(%zu)", n);
    alert_enqueue(a, data, len, what);
    textbuf_fini(&subj);
    textbuf_fini(&body);
}

/* alert_won - this host sends the alert. Takes ai. */
static void alert_won(struct alert *a, struct alert_info *ai)
{
    if (a->closing) {
        alert_info_free(ai);
        return;
    }
    char qk[LOG_QUOTE_BUF];
    log_info("alert rule=%s key=%s suppressed=%lu%s", ai->rule ? ai->rule : "-",
             ai->key ? log_quote_field(ai->key, strlen(ai->key), qk, sizeof qk) : "-",
             ai->suppressed, a->digest ? " (digest)" : "");
    if (a->digest) {
        if (a->n_digest < ALERT_DIGEST_MAX) {
            struct alert_info *copy = xmalloc(sizeof *copy);
            *copy = *ai;
            a->digest_items[a->n_digest++] = copy;
            return;
        }
        a->digest_overflow++;
        alert_info_free(ai);
        return;
    }
    alert_send_one(a, ai);
    alert_info_free(ai);
}

static void alert_ask_unlink(struct alert_ask *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        q->a->asks = q->next;
    if (q->next)
        q->next->prev = q->prev;
}

static void alert_ask_free(struct alert_ask *q)
{
    alert_info_free(&q->ai);
    free(q->id);
    free(q);
}

static void alert_on_ask(void *arg, const struct redisReply *r)
{
    struct alert_ask *q = arg;
    struct alert *a = q->a;
    if (!a) {
        /* The alerts were switched off while this was out (a reload;
         * the Redis connection stayed for the event stream). */
        alert_ask_free(q);
        return;
    }
    alert_ask_unlink(q);
    double now = (double)time(NULL);
    const redisReply *reply = (const redisReply *)r;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER &&
        reply->element[1]->type == REDIS_REPLY_INTEGER &&
        reply->element[2]->type == REDIS_REPLY_INTEGER) {
        long long won = reply->element[0]->integer;
        long long ttl = reply->element[2]->integer;
        if (won) {
            q->ai.suppressed = (unsigned long)reply->element[1]->integer;
            dedup_settle(a->dedup, q->id, q->id_len, now + a->every);
            alert_won(a, &q->ai);
        } else {
            /* Another host has this interval. */
            a->stats.suppressed++;
            dedup_settle(a->dedup, q->id, q->id_len, now + (ttl > 0 ? (double)ttl : 1));
            alert_info_free(&q->ai);
        }
    } else {
        char q2[LOG_QUOTE_BUF];
        log_warn_every(&a->lim_redis, ALERT_LOG_EVERY,
                       "alert: Redis de-dup %s: deciding on this host alone",
                       !reply ? "unavailable" :
                       reply->type == REDIS_REPLY_ERROR
                           ? log_quote(reply->str, reply->len, q2, sizeof q2)
                           : "gave an unexpected reply");
        q->ai.suppressed = q->handover;
        dedup_settle(a->dedup, q->id, q->id_len, now + a->every);
        alert_won(a, &q->ai);
    }
    free(q->id);
    free(q);
}

/* The keep time of a shared count: it outlives a quiet spell of a few
 * intervals, not for ever. */
static void alert_keep(const struct alert *a, char *out, size_t cap)
{
    snprintf(out, cap, "%lld", (long long)ceil(a->every * 10 < 86400 ? 86400 : a->every * 10));
}

static void alert_flush_one(void *arg, const char *id, size_t len, unsigned long pending)
{
    struct alert *a = arg;
    const char *key = memchr(id, '\0', len);
    if (!key)
        return;
    key++;
    char *count = xasprintf("%salert-suppressed:%s:%.*s", a->prefix, id,
                            (int)(len - (size_t)(key - id)), key);
    char n[32], keep[32];
    snprintf(n, sizeof n, "%lu", pending);
    alert_keep(a, keep, sizeof keep);
    const char *argv[] = {"EVAL", alert_count_lua, "1", count, n, keep};
    size_t lens[6];
    for (size_t i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    /* Fire and forget: a count lost with Redis down only makes the next
     * alert's figure low. */
    redisaux_command(a->aux, 6, argv, lens, NULL, NULL);
    free(count);
}

static void alert_on_flush(uv_timer_t *t)
{
    struct alert *a = t->data;
    if (a->aux && !a->closing && redisaux_is_up(a->aux))
        dedup_drain(a->dedup, alert_flush_one, a, ALERT_FLUSH_MAX);
}

void alert_submit(struct alert *a, struct alert_info *ai, unsigned long handover)
{
    char id[1024];
    int n = snprintf(id, sizeof id, "%s%c%s", ai->rule ? ai->rule : "", '\0', ai->key ? ai->key : "");
    size_t id_len = n < 0 ? 0 : (size_t)n < sizeof id ? (size_t)n : sizeof id - 1;
    double now = ai->time;
    if (a->closing) {
        alert_info_free(ai);
        return;
    }
    if (!a->aux) {
        ai->suppressed = handover;
        dedup_settle(a->dedup, id, id_len, now + a->every);
        alert_won(a, ai);
        return;
    }
    struct alert_ask *q = xcalloc(1, sizeof *q);
    q->a = a;
    q->id = xmalloc(id_len ? id_len : 1);
    memcpy(q->id, id, id_len);
    q->id_len = id_len;
    q->ai = *ai;
    q->handover = handover;
    char *lock = xasprintf("%salert:%s:%s", a->prefix, ai->rule ? ai->rule : "", ai->key ? ai->key : "");
    char *count = xasprintf("%salert-suppressed:%s:%s", a->prefix, ai->rule ? ai->rule : "",
                            ai->key ? ai->key : "");
    char every[32], pend[32], keep[32];
    snprintf(every, sizeof every, "%lld", (long long)ceil(a->every));
    snprintf(pend, sizeof pend, "%lu", handover);
    alert_keep(a, keep, sizeof keep);
    const char *argv[] = {"EVAL", alert_dedup_lua, "2", lock, count, a->hostname, every, pend, keep};
    size_t lens[9];
    for (size_t i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    q->next = a->asks;
    if (a->asks)
        a->asks->prev = q;
    a->asks = q;
    int rc = redisaux_command(a->aux, 9, argv, lens, alert_on_ask, q);
    free(lock);
    free(count);
    if (rc < 0)
        alert_on_ask(q, NULL); /* Redis down: decide here */
}

void alert_get_stats(const struct alert *a, struct alert_stats *out)
{
    *out = a->stats;
}

static void alert_on_close(uv_handle_t *h)
{
    struct alert *a = h->data;
    if (--a->handles > 0)
        return;
    alert_settings_free(a);
    dedup_free(a->dedup);
    free(a);
}

void alert_close(struct alert *a)
{
    if (!a)
        return;
    if (!a->closing) {
        a->closing = true;
        if (a->q_len || a->sending || a->n_digest)
            log_warn("alerts off: %u mails waiting, %d being sent and %zu digest entries dropped",
                     a->q_len, a->sending ? 1 : 0, a->n_digest);
        /* Questions still out: the connection answers each exactly once
         * (NULL when it closes), maybe after we are gone (a reload that
         * switches alerts off keeps it for the event stream): they are
         * left to that answer, which frees them. */
        while (a->asks) {
            struct alert_ask *q = a->asks;
            alert_ask_unlink(q);
            q->a = NULL;
        }
        for (struct alert_mail *m = a->q_head, *next; m; m = next) {
            next = m->next;
            alert_mail_free(m);
        }
        a->q_head = a->q_tail = NULL;
        a->q_len = 0;
        for (size_t i = 0; i < a->n_digest; i++) {
            alert_info_free(a->digest_items[i]);
            free(a->digest_items[i]);
        }
        a->n_digest = 0;
        if (a->smtpc)
            smtpc_cancel(a->smtpc);
        if (a->proc && !a->proc->exited) {
            /* Our own child, by its handle, and only while it runs. */
            a->proc->timed_out = true;
            kill(-a->proc->proc.pid, SIGKILL);
        }
    }
    /* Back here from the delivery's callback once it has ended. */
    if (a->smtpc || a->proc || uv_is_closing((uv_handle_t *)&a->queue_timer))
        return;
    uv_close((uv_handle_t *)&a->queue_timer, alert_on_close);
    uv_close((uv_handle_t *)&a->digest_timer, alert_on_close);
    uv_close((uv_handle_t *)&a->flush_timer, alert_on_close);
}
