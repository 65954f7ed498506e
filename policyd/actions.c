/*
 * actions - see actions.h.
 *
 * The log line follows Postfix's shape so that operators can grep it
 * beside the maillog: "c=1a r=3 RCPT client=host[192.0.2.7]
 * helo=<h> sender=<s> recipient=<r> sasl_username=u queue_id=Q
 * rule=flood verdict=reject score.ip=512 action=\"550 5.7.1 ...\"".
 * Peer-supplied values go through log_quote().
 */
#include "actions.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "template.h"

static FILE *actions_json;
/* The JSON record is built in memory (one stream, rewound for each
 * record, so steady state allocates nothing) and then goes to the file
 * and to the event sink (the Redis stream), which see the same bytes. */
static FILE *actions_mem;
static char *actions_mem_buf;
static size_t actions_mem_len;
static actions_sink_fn actions_sink;
static void *actions_sink_arg;

/* Append with bounds; out is always NUL-terminated. */
struct outbuf {
    char *p;
    size_t len;                 /* bytes written */
    size_t cap;                 /* bytes available including the NUL */
};

/* out_add - s[0..n), cut to the room left; a cut falls between UTF-8
 * characters (the texts are valid UTF-8, and stay so: Postfix writes
 * them into SMTP replies and, for PREPEND, into a header). */
static void out_add(struct outbuf *o, const char *s, size_t n)
{
    if (o->cap == 0)
        return;
    size_t room = o->cap - 1 - o->len;
    if (n > room) {
        n = room;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void out_str(struct outbuf *o, const char *s)
{
    out_add(o, s, strlen(s));
}

/* coded_text_blank - a coded message ("550 ...") whose text after the
 * code and an optional enhanced code ("5.7.1") came out empty: Postfix
 * would take "550" for the name of a restriction, log a configuration
 * error and answer 451. */
static bool coded_text_blank(const char *t, size_t n)
{
    size_t i = 4; /* "NNN " */
    while (i < n && t[i] == ' ')
        i++;
    size_t e = i;
    while (e < n && ((t[e] >= '0' && t[e] <= '9') || t[e] == '.'))
        e++;
    if (e > i && memchr(t + i, '.', e - i) && (e == n || t[e] == ' '))
        i = e; /* an enhanced status code */
    while (i < n && t[i] == ' ')
        i++;
    return i >= n;
}

/* arg_usable - a redirect, filter or prepend argument, as expanded, that
 * Postfix will act on: it ignores (with a warning) a redirect without
 * '@', a filter without ':' and a prepend that is no "Name: value". */
static bool arg_usable(enum verdict v, const char *a, size_t n)
{
    if (v == VERDICT_REDIRECT)
        return memchr(a, '@', n) != NULL;
    if (v == VERDICT_FILTER)
        return memchr(a, ':', n) != NULL;
    size_t i = 0;
    while (i < n && a[i] > ' ' && a[i] < 0x7f && a[i] != ':')
        i++;
    if (i == 0)
        return false;
    while (i < n && (a[i] == ' ' || a[i] == '\t'))
        i++;
    return i < n && a[i] == ':';
}

size_t actions_format(const struct rules *r, const struct action_rule *ar, struct request *req,
                      const struct eval *ev, char *out, size_t cap)
{
    struct outbuf o = {out, 0, cap};
    if (cap)
        out[0] = '\0';
    if (!ar) {
        out_str(&o, "DUNNO");
        return o.len;
    }
    struct rules_template_ctx ctx = {.rules = r, .req = req, .ev = ev, .rule = ar->name};
    char text[ACTIONS_MAX_ANSWER];
    size_t tlen = 0;
    if (ar->message)
        tlen = template_expand(ar->message, rules_template_value, &ctx, text, sizeof text);
    char arg[ACTIONS_MAX_ANSWER];
    size_t alen = 0;
    if (ar->arg)
        alen = template_expand(ar->arg, rules_template_value, &ctx, arg, sizeof arg);

    switch (ar->verdict) {
    case VERDICT_DUNNO:
        out_str(&o, "DUNNO");
        return o.len;
    case VERDICT_PERMIT:
        out_str(&o, "OK");
        break;
    case VERDICT_DEFER:
        if (tlen && ar->message_coded) {
            out_add(&o, text, tlen);
            if (coded_text_blank(text, tlen))
                out_str(&o, o.len && o.p[o.len - 1] == ' ' ? "try again later" : " try again later");
            return o.len;
        }
        out_str(&o, "DEFER");
        if (!tlen)
            out_str(&o, " 4.7.1 Too much mail from you, try again later");
        break;
    case VERDICT_REJECT:
        if (tlen && ar->message_coded) {
            out_add(&o, text, tlen);
            if (coded_text_blank(text, tlen))
                out_str(&o, o.len && o.p[o.len - 1] == ' ' ? "rejected by policy" : " rejected by policy");
            return o.len;
        }
        out_str(&o, "REJECT");
        if (!tlen)
            out_str(&o, " 5.7.1 Message rejected by policy");
        break;
    case VERDICT_HOLD:
        out_str(&o, "HOLD");
        break;
    case VERDICT_DISCARD:
        out_str(&o, "DISCARD");
        break;
    case VERDICT_WARN:
        out_str(&o, "WARN");
        break;
    case VERDICT_REDIRECT:
    case VERDICT_FILTER:
    case VERDICT_PREPEND: {
        /* A prepend's header is its argument, or else its message. */
        const char *a = ar->verdict == VERDICT_PREPEND && !alen ? text : arg;
        size_t n = ar->verdict == VERDICT_PREPEND && !alen ? tlen : alen;
        if (!arg_usable(ar->verdict, a, n)) {
            /* Expanded to something Postfix ignores (an empty %{...}):
             * say DUNNO, which is what it would do, so the log shows it. */
            out_str(&o, "DUNNO");
            return o.len;
        }
        out_str(&o, ar->verdict == VERDICT_REDIRECT ? "REDIRECT "
                    : ar->verdict == VERDICT_FILTER ? "FILTER "
                                                    : "PREPEND ");
        out_add(&o, a, n);
        return o.len;
    }
    case VERDICT_SLEEP: {
        char num[32];
        snprintf(num, sizeof num, "SLEEP %u", ar->sleep);
        out_str(&o, num);
        return o.len;
    }
    }
    if (tlen) {
        out_str(&o, " ");
        out_add(&o, text, tlen);
    }
    return o.len;
}

bool actions_log_wanted(const struct decision *d)
{
    const struct eval *ev = d->ev;
    if (d->store_failed || d->dns_failed || ev->n_would || ev->n_would_points)
        return true;
    if (ev->stopped_by)
        return ev->stopped_by->then == VERDICT_PERMIT;
    if (!ev->decided)
        return false;
    return ev->decided->side_log || ev->decided->verdict != VERDICT_DUNNO;
}

/* The attributes a decision line shows, in Postfix's order. */
static const struct {
    enum attr attr;
    const char *label;
    bool angle;                 /* shown as <value> like Postfix */
} actions_fields[] = {
    {ATTR_HELO_NAME, "helo", true},
    {ATTR_SENDER, "sender", true},
    {ATTR_RECIPIENT, "recipient", true},
    {ATTR_SASL_USERNAME, "sasl_username", false},
    {ATTR_QUEUE_ID, "queue_id", false},
};

static void actions_add_scores(struct outbuf *o, const struct decision *d)
{
    const struct eval *ev = d->ev;
    for (size_t u = 0; u < ev->n_updates; u++) {
        int ci = ev->update_counter[u];
        if (!ev->have_score[ci])
            continue;
        char num[96];
        snprintf(num, sizeof num, " score.%s=%.*f", d->rules->counters[ci].name,
                 d->rules->counters[ci].precision, ev->score[ci]);
        out_str(o, num);
    }
}

/* The DNS lists that listed the client, as " dnsbl=zone:code,..." */
static void actions_add_dns(struct outbuf *o, const struct decision *d)
{
    static const char *const label[] = {"", "dnsbl", "rhsbl", "dnswl"};
    const struct eval *ev = d->ev;
    if (!ev->dns_ready)
        return;
    for (int t = DNSLIST_BL; t <= DNSLIST_WL; t++) {
        bool first = true;
        for (size_t i = 0; i < d->rules->n_dnsqs; i++) {
            const struct dnsq *q = &d->rules->dnsqs[i];
            if (q->list != (enum dnslist_type)t || ev->dns[i].status != DNS_FOUND)
                continue;
            uint32_t a = ev->dns[i].code;
            char item[320];
            snprintf(item, sizeof item, "%s%s%s%s:%u.%u.%u.%u", first ? " " : ",",
                     first ? label[t] : "", first ? "=" : "", q->zone, a >> 24,
                     (a >> 16) & 255, (a >> 8) & 255, a & 255);
            out_str(o, item);
            first = false;
        }
    }
}

static void actions_log_line(const struct decision *d)
{
    char line[3072];
    struct outbuf o = {line, 0, sizeof line};
    char q[LOG_QUOTE_BUF], q2[LOG_QUOTE_BUF];
    char head[128];
    size_t len, len2;
    const char *state = request_get(d->req, ATTR_PROTOCOL_STATE, &len);
    snprintf(head, sizeof head, "c=%lx r=%lu ", d->conn_id, d->req_no);
    out_str(&o, head);
    out_str(&o, log_quote_field(state, state ? len : 0, q, sizeof q));
    const char *name = request_get(d->req, ATTR_CLIENT_NAME, &len);
    const char *addr = request_get(d->req, ATTR_CLIENT_ADDRESS, &len2);
    out_str(&o, " client=");
    out_str(&o, name ? log_quote_field(name, len, q, sizeof q) : "unknown");
    out_str(&o, "[");
    out_str(&o, log_quote_field(addr, addr ? len2 : 0, q2, sizeof q2));
    out_str(&o, "]");
    for (size_t i = 0; i < sizeof actions_fields / sizeof actions_fields[0]; i++) {
        const char *v = request_get(d->req, actions_fields[i].attr, &len);
        if (!v || (!len && !actions_fields[i].angle))
            continue;
        out_str(&o, " ");
        out_str(&o, actions_fields[i].label);
        out_str(&o, actions_fields[i].angle ? "=<" : "=");
        out_str(&o, log_quote_field(v, len, q, sizeof q));
        if (actions_fields[i].angle)
            out_str(&o, ">");
    }
    const struct eval *ev = d->ev;
    if (d->store_failed) {
        out_str(&o, " rule=- verdict=on_error");
    } else if (d->dns_failed) {
        out_str(&o, " rule=- verdict=dns_defer");
    } else if (ev->stopped_by) {
        out_str(&o, " rule=");
        out_str(&o, ev->stopped_by->name);
        out_str(&o, ev->stopped_by->then == VERDICT_PERMIT ? " verdict=permit" : " verdict=dunno");
    } else if (ev->decided) {
        out_str(&o, " rule=");
        out_str(&o, ev->decided->name);
        out_str(&o, " verdict=");
        out_str(&o, verdict_name(ev->decided->verdict));
    } else {
        out_str(&o, " rule=- verdict=dunno");
    }
    for (size_t i = 0; i < ev->n_would; i++) {
        out_str(&o, " would=");
        out_str(&o, verdict_name(ev->would[i]->verdict));
        out_str(&o, " would_rule=");
        out_str(&o, ev->would[i]->name);
    }
    for (size_t i = 0; i < ev->n_would_points; i++) {
        out_str(&o, " would_points=");
        out_str(&o, ev->would_points[i]->name);
    }
    actions_add_scores(&o, d);
    actions_add_dns(&o, d);
    out_str(&o, " action=\"");
    out_str(&o, log_quote(d->answer, strlen(d->answer), q, sizeof q));
    out_str(&o, "\"");
    log_write(LOG_LEVEL_INFO, "%s", line);
}

/* JSON string escaping for the decision log (values are arbitrary bytes
 * from the peer: escape controls, quote and backslash; sanitize UTF-8). */
static void json_str(FILE *fp, const char *s, size_t len)
{
    char clean[2048];
    size_t n = template_sanitize(s, len, clean, sizeof clean);
    fputc('"', fp);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)clean[i];
        if (ch == '"' || ch == '\\')
            fprintf(fp, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(fp, "\\u%04x", ch);
        else
            fputc(ch, fp);
    }
    fputc('"', fp);
}

static void json_field(FILE *fp, const char *name, const char *v, size_t len)
{
    fprintf(fp, ",\"%s\":", name);
    json_str(fp, v, len);
}

static void actions_log_json(const struct decision *d)
{
    if (!actions_mem && !(actions_mem = open_memstream(&actions_mem_buf, &actions_mem_len)))
        return;
    FILE *fp = actions_mem;
    rewind(fp);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fprintf(fp, "{\"time\":%lld.%03ld,\"conn\":\"%lx\",\"req\":%lu", (long long)ts.tv_sec,
            ts.tv_nsec / 1000000, d->conn_id, d->req_no);
    static const enum attr shown[] = {ATTR_PROTOCOL_STATE, ATTR_CLIENT_ADDRESS, ATTR_CLIENT_NAME,
                                      ATTR_HELO_NAME,      ATTR_SENDER,         ATTR_RECIPIENT,
                                      ATTR_SASL_USERNAME,  ATTR_QUEUE_ID,       ATTR_INSTANCE,
                                      ATTR_SIZE,           ATTR_RECIPIENT_COUNT};
    for (size_t i = 0; i < sizeof shown / sizeof shown[0]; i++) {
        size_t len;
        const char *v = request_get(d->req, shown[i], &len);
        if (v)
            json_field(fp, attr_name(shown[i]), v, len);
    }
    const struct eval *ev = d->ev;
    const char *rule = ev->stopped_by ? ev->stopped_by->name : ev->decided ? ev->decided->name : NULL;
    if (rule)
        json_field(fp, "rule", rule, strlen(rule));
    const char *verdict = d->store_failed ? "on_error"
                          : d->dns_failed ? "dns_defer"
                          : ev->stopped_by ? (ev->stopped_by->then == VERDICT_PERMIT ? "permit" : "dunno")
                          : ev->decided    ? verdict_name(ev->decided->verdict)
                                           : "dunno";
    json_field(fp, "verdict", verdict, strlen(verdict));
    json_field(fp, "action", d->answer, strlen(d->answer));
    fputs(",\"scores\":{", fp);
    bool first = true;
    for (size_t u = 0; u < ev->n_updates; u++) {
        int ci = ev->update_counter[u];
        if (!ev->have_score[ci])
            continue;
        fprintf(fp, "%s\"%s\":%.*f", first ? "" : ",", d->rules->counters[ci].name,
                d->rules->counters[ci].precision, ev->score[ci]);
        first = false;
    }
    fputs("},\"points\":[", fp);
    for (size_t i = 0; i < ev->n_matched; i++) {
        fputs(i ? "," : "", fp);
        json_str(fp, ev->matched[i]->name, strlen(ev->matched[i]->name));
    }
    fputs("],\"would\":[", fp);
    for (size_t i = 0; i < ev->n_would; i++) {
        fputs(i ? "," : "", fp);
        json_str(fp, ev->would[i]->name, strlen(ev->would[i]->name));
    }
    fprintf(fp, "],\"elapsed_ms\":%.3f}\n", d->elapsed_ms);
    if (fflush(fp) != 0 || ferror(fp))
        return;
    actions_json_write(actions_mem_buf, actions_mem_len);
    if (actions_sink)
        actions_sink(actions_sink_arg, d, actions_mem_buf, actions_mem_len - 1);
}

void actions_log(const struct decision *d)
{
    if (log_threshold >= LOG_LEVEL_INFO && actions_log_wanted(d))
        actions_log_line(d);
    if (actions_json || actions_sink)
        actions_log_json(d);
}

void actions_json_write(const char *line, size_t len)
{
    if (!actions_json)
        return;
    fwrite(line, 1, len, actions_json);
    fflush(actions_json);
}

void actions_set_sink(actions_sink_fn fn, void *arg)
{
    actions_sink = fn;
    actions_sink_arg = arg;
}

int actions_json_open(const char *path)
{
    actions_json_close();
    if (!path)
        return 0;
    actions_json = fopen(path, "a");
    if (!actions_json)
        return -errno;
    return 0;
}

void actions_json_close(void)
{
    if (actions_json)
        fclose(actions_json);
    actions_json = NULL;
    if (actions_mem) {
        fclose(actions_mem);
        free(actions_mem_buf);
    }
    actions_mem = NULL;
    actions_mem_buf = NULL;
    actions_mem_len = 0;
}
