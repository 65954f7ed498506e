/*
 * smtpc - see smtpc.h.
 *
 * One struct smtpc per delivery: the socket, one deadline timer restarted
 * at every step, the read buffer and the state. Commands go out one at a
 * time (no PIPELINING: an alert is one small mail), each write from its
 * own heap copy freed in its write callback; libuv runs those callbacks
 * (cancelled ones too) before the close callback, so the struct is freed
 * last, in the final close callback, which is also where the result is
 * reported: exactly once, and always from the loop.
 */
#include "smtpc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "xalloc.h"

#define SMTPC_DOT_TIMEOUT_MS 600000u /* the final dot's reply: RFC 5321's 10 minutes */

enum smtpc_state {
    SMTPC_CONNECT,
    SMTPC_GREETING,
    SMTPC_EHLO,
    SMTPC_HELO,
    SMTPC_MAIL,
    SMTPC_RCPT,
    SMTPC_DATA,
    SMTPC_DOT,
    SMTPC_QUIT,
    SMTPC_DONE
};

struct smtpc {
    uv_tcp_t tcp;
    uv_timer_t timer;           /* deadline of the current step */
    uv_connect_t connect_req;
    enum smtpc_state state;
    unsigned timeout_ms;        /* per step */
    int handles;                /* open handles */
    bool closing;
    int result;                 /* what the callback will get */
    char detail[256];           /* the relay's last reply, for logs */
    char *helo, *from;
    char **to;
    size_t n_to;
    size_t next_rcpt;           /* RCPT being asked */
    size_t accepted;            /* recipients the relay took */
    bool rcpt_temp;             /* a recipient was refused with 4xx */
    bool *temp_refused;         /* the job's, or NULL */
    struct textbuf data;        /* dot-stuffed message */
    char rbuf[SMTPC_MAX_REPLY];
    size_t rlen;                /* bytes in rbuf */
    smtpc_done_cb cb;
    void *arg;
};

struct smtpc_write {
    uv_write_t req;
    char *buf;
};

int smtpc_reply_parse(const char *buf, size_t len, size_t *used, int *code)
{
    size_t pos = 0;
    int first = -1;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl)
            return 0;
        size_t llen = (size_t)(nl - (buf + pos));
        const char *l = buf + pos;
        if (llen < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' ||
            l[2] > '9')
            return -EPROTO;
        int c = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
        if (first >= 0 && c != first)
            return -EPROTO;
        first = c;
        pos += llen + 1;
        /* "250-" goes on; "250 ", "250\r" and "250" end the reply. */
        if (llen == 3 || l[3] != '-') {
            *used = pos;
            *code = c;
            return 1;
        }
    }
    return 0;
}

void smtpc_dot_stuff(const char *data, size_t len, struct textbuf *out)
{
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        char ch = data[i];
        if (bol && ch == '.')
            textbuf_add(out, ".", 1);
        bol = false;
        if (ch == '\r' && i + 1 < len && data[i + 1] == '\n')
            continue; /* the '\n' writes the line end */
        if (ch == '\n' || ch == '\r') {
            textbuf_add(out, "\r\n", 2);
            bol = true;
            continue;
        }
        textbuf_add(out, &ch, 1);
    }
    if (!bol)
        textbuf_add(out, "\r\n", 2);
    textbuf_add(out, ".\r\n", 3);
}

int smtpc_parse_address(const char *s, struct sockaddr_storage *out)
{
    char host[64];
    const char *port_s = NULL;
    memset(out, 0, sizeof *out);
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || (size_t)(end - s - 1) >= sizeof host || (end[1] && end[1] != ':'))
            return -EINVAL;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        port_s = end[1] ? end + 2 : NULL;
    } else {
        const char *colon = strchr(s, ':');
        size_t n = colon ? (size_t)(colon - s) : strlen(s);
        if (n == 0 || n >= sizeof host || (colon && strchr(colon + 1, ':')))
            return -EINVAL;
        memcpy(host, s, n);
        host[n] = '\0';
        port_s = colon ? colon + 1 : NULL;
    }
    long port = 25;
    if (port_s) {
        char *end;
        errno = 0;
        port = strtol(port_s, &end, 10);
        if (!*port_s || *end || errno || port < 1 || port > 65535)
            return -EINVAL;
    }
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0 && !strchr(host, ':'))
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0 && strchr(host, ':'))
        return 0;
    return -EINVAL;
}

static void smtpc_on_close(uv_handle_t *h)
{
    struct smtpc *c = h->data;
    if (--c->handles > 0)
        return;
    c->cb(c->arg, c->result, c->detail);
    free(c->helo);
    free(c->from);
    for (size_t i = 0; i < c->n_to; i++)
        free(c->to[i]);
    free(c->to);
    textbuf_fini(&c->data);
    free(c);
}

static void smtpc_close(struct smtpc *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->state = SMTPC_DONE;
    uv_close((uv_handle_t *)&c->tcp, smtpc_on_close);
    uv_close((uv_handle_t *)&c->timer, smtpc_on_close);
}

/* smtpc_fail - end with status; detail says why. Once the relay has
 * taken the message (a 2xx to the final dot), what QUIT meets (no answer,
 * garbage, a write error) changes nothing: the mail was delivered, and a
 * failure here would have it sent again. */
static void smtpc_fail(struct smtpc *c, int status, const char *why)
{
    if (c->closing)
        return;
    if (c->state == SMTPC_QUIT) {
        smtpc_close(c);
        return;
    }
    c->result = status;
    if (why)
        snprintf(c->detail, sizeof c->detail, "%s", why);
    smtpc_close(c);
}

/* smtpc_step_ms - the wait for the reply now owed. The reply to the
 * data's final dot gets at least RFC 5321's 10 minutes (4.5.3.2.6): the
 * relay may be busy with the message it has, and giving up then sends
 * it again when the relay did take it (a copy per retry). */
static unsigned smtpc_step_ms(const struct smtpc *c)
{
    if (c->state == SMTPC_DOT && c->timeout_ms < SMTPC_DOT_TIMEOUT_MS)
        return SMTPC_DOT_TIMEOUT_MS;
    return c->timeout_ms;
}

static void smtpc_on_timeout(uv_timer_t *t)
{
    struct smtpc *c = t->data;
    char why[96];
    snprintf(why, sizeof why, "no answer within %u ms", smtpc_step_ms(c));
    smtpc_fail(c, -EAGAIN, why);
}

static void smtpc_arm(struct smtpc *c)
{
    uv_timer_start(&c->timer, smtpc_on_timeout, smtpc_step_ms(c), 0);
}

static void smtpc_on_write(uv_write_t *req, int status)
{
    struct smtpc_write *w = (struct smtpc_write *)req;
    struct smtpc *c = req->data;
    free(w->buf);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        char why[96];
        snprintf(why, sizeof why, "write: %s", uv_strerror(status));
        smtpc_fail(c, -EAGAIN, why);
    }
}

/* smtpc_send - write n bytes (copied) and restart the deadline. */
static void smtpc_send(struct smtpc *c, const char *s, size_t n)
{
    struct smtpc_write *w = xmalloc(sizeof *w);
    w->buf = xmalloc(n ? n : 1);
    memcpy(w->buf, s, n);
    w->req.data = c;
    uv_buf_t b = uv_buf_init(w->buf, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, smtpc_on_write);
    if (rc < 0) {
        free(w->buf);
        free(w);
        char why[96];
        snprintf(why, sizeof why, "write: %s", uv_strerror(rc));
        smtpc_fail(c, -EAGAIN, why);
        return;
    }
    smtpc_arm(c);
}

/* smtpc_cmd - "VERB arg\r\n". */
static void smtpc_cmd(struct smtpc *c, const char *verb, const char *arg, const char *tail)
{
    char line[1100];
    int n = snprintf(line, sizeof line, "%s%s%s\r\n", verb, arg, tail);
    if (n < 0 || (size_t)n >= sizeof line) {
        smtpc_fail(c, -EPERM, "command too long");
        return;
    }
    smtpc_send(c, line, (size_t)n);
}

static void smtpc_next_rcpt(struct smtpc *c)
{
    if (c->next_rcpt < c->n_to) {
        c->state = SMTPC_RCPT;
        smtpc_cmd(c, "RCPT TO:<", c->to[c->next_rcpt++], ">");
        return;
    }
    if (c->accepted == 0) {
        /* Nobody took it: worth another try if any refusal was temporary. */
        smtpc_fail(c, c->rcpt_temp ? -EAGAIN : -EPERM, NULL);
        return;
    }
    c->state = SMTPC_DATA;
    smtpc_send(c, "DATA\r\n", 6);
}

/* smtpc_reply - one complete reply: the state machine's step. */
static void smtpc_reply(struct smtpc *c, int code, const char *text, size_t len)
{
    /* Keep the last line, without its line end, for the log. */
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    const char *last = text + len;
    while (last > text && last[-1] != '\n')
        last--;
    char q[LOG_QUOTE_BUF];
    if (c->state != SMTPC_QUIT) /* the answer to the message is what counts */
        snprintf(c->detail, sizeof c->detail, "%s",
                 log_quote(last, (size_t)(text + len - last), q, sizeof q));
    int status = code >= 500 ? -EPERM : -EAGAIN;
    bool ok = code >= 200 && code < 300;

    switch (c->state) {
    case SMTPC_GREETING:
        if (!ok) {
            smtpc_fail(c, status, NULL);
            break;
        }
        c->state = SMTPC_EHLO;
        smtpc_cmd(c, "EHLO ", c->helo, "");
        break;
    case SMTPC_EHLO:
        if (ok) {
            c->state = SMTPC_MAIL;
            smtpc_cmd(c, "MAIL FROM:<", c->from, ">");
        } else if (code >= 500) {
            c->state = SMTPC_HELO;
            smtpc_cmd(c, "HELO ", c->helo, "");
        } else {
            smtpc_fail(c, status, NULL);
        }
        break;
    case SMTPC_HELO:
        if (!ok) {
            smtpc_fail(c, status, NULL);
            break;
        }
        c->state = SMTPC_MAIL;
        smtpc_cmd(c, "MAIL FROM:<", c->from, ">");
        break;
    case SMTPC_MAIL:
        if (ok)
            smtpc_next_rcpt(c);
        else
            smtpc_fail(c, status, NULL);
        break;
    case SMTPC_RCPT:
        if (ok) {
            c->accepted++;
        } else if (code < 500) {
            c->rcpt_temp = true;
            if (c->temp_refused)
                c->temp_refused[c->next_rcpt - 1] = true;
        }
        smtpc_next_rcpt(c);
        break;
    case SMTPC_DATA:
        if (code != 354) {
            smtpc_fail(c, status, NULL);
            break;
        }
        c->state = SMTPC_DOT;
        smtpc_send(c, c->data.p, c->data.len);
        break;
    case SMTPC_DOT:
        if (!ok) {
            smtpc_fail(c, status, NULL);
            break;
        }
        c->result = 0;
        if (c->accepted < c->n_to) {
            size_t dl = strlen(c->detail);
            snprintf(c->detail + dl, sizeof c->detail - dl, " (%zu of %zu recipients refused)",
                     c->n_to - c->accepted, c->n_to);
        }
        c->state = SMTPC_QUIT;
        smtpc_send(c, "QUIT\r\n", 6);
        break;
    case SMTPC_QUIT:
        smtpc_close(c);
        break;
    case SMTPC_CONNECT:
    case SMTPC_DONE:
        break;
    }
}

static void smtpc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct smtpc *c = h->data;
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(sizeof c->rbuf - c->rlen));
}

static void smtpc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct smtpc *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (c->state == SMTPC_QUIT) {
            smtpc_close(c); /* delivered; the relay hung up after QUIT */
            return;
        }
        char why[96];
        snprintf(why, sizeof why, "connection lost: %s", uv_strerror((int)nread));
        smtpc_fail(c, -EAGAIN, why);
        return;
    }
    c->rlen += (size_t)nread;
    while (!c->closing && c->rlen > 0) {
        size_t used = 0;
        int code = 0;
        int rc = smtpc_reply_parse(c->rbuf, c->rlen, &used, &code);
        if (rc == 0) {
            if (c->rlen == sizeof c->rbuf)
                smtpc_fail(c, -EAGAIN, "reply too long");
            return;
        }
        if (rc < 0) {
            smtpc_fail(c, -EAGAIN, "not an SMTP reply");
            return;
        }
        smtpc_reply(c, code, c->rbuf, used);
        memmove(c->rbuf, c->rbuf + used, c->rlen - used);
        c->rlen -= used;
        /* More after one reply was sent before the relay had our next
         * command (no PIPELINING here): replies ahead of the commands
         * mean the peer is not speaking SMTP with us, and taking them as
         * answers would report a mail delivered that was never sent. */
        if (!c->closing && c->rlen > 0) {
            smtpc_fail(c, -EAGAIN, "replies ahead of the commands: not an SMTP dialogue");
            return;
        }
    }
}

static void smtpc_on_connect(uv_connect_t *req, int status)
{
    struct smtpc *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        char why[96];
        snprintf(why, sizeof why, "connect: %s", uv_strerror(status));
        smtpc_fail(c, -EAGAIN, why);
        return;
    }
    c->state = SMTPC_GREETING;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, smtpc_alloc, smtpc_on_read);
    if (rc < 0) {
        smtpc_fail(c, -EAGAIN, uv_strerror(rc));
        return;
    }
    smtpc_arm(c);
}

struct smtpc *smtpc_start(uv_loop_t *loop, const struct sockaddr *addr, const struct smtpc_job *job,
                          unsigned timeout_ms, smtpc_done_cb cb, void *arg)
{
    struct smtpc *c = xcalloc(1, sizeof *c);
    c->cb = cb;
    c->arg = arg;
    c->timeout_ms = timeout_ms ? timeout_ms : 30000;
    c->helo = xstrdup(job->helo);
    c->from = xstrdup(job->from);
    c->to = xcalloc(job->n_to ? job->n_to : 1, sizeof *c->to);
    for (size_t i = 0; i < job->n_to; i++)
        c->to[i] = xstrdup(job->to[i]);
    c->n_to = job->n_to;
    c->temp_refused = job->temp_refused;
    c->result = -EAGAIN;
    snprintf(c->detail, sizeof c->detail, "no reply");
    textbuf_init(&c->data, job->len * 2 + 8);
    smtpc_dot_stuff(job->data, job->len, &c->data);
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    c->tcp.data = c->timer.data = c->connect_req.data = c;
    c->handles = 2;
    c->state = SMTPC_CONNECT;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, addr, smtpc_on_connect);
    if (rc < 0) {
        /* Reported from the close callback, not from here. */
        char why[96];
        snprintf(why, sizeof why, "connect: %s", uv_strerror(rc));
        smtpc_fail(c, -EAGAIN, why);
        return c;
    }
    smtpc_arm(c);
    return c;
}

void smtpc_cancel(struct smtpc *c)
{
    smtpc_fail(c, -ECANCELED, "cancelled");
}
