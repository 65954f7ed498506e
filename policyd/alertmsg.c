/*
 * alertmsg - see alertmsg.h.
 *
 * The templates are expanded here rather than by template.c because an
 * alert body is many lines (template.c turns every line break of a value
 * into '?', which is right for a Postfix answer and wrong for a list of
 * evidence). Expansion looks each name up in a small table; the names
 * were checked when the config was loaded.
 */
#include "alertmsg.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

const char alertmsg_default_subject[] = "smtpguard: %{rule} %{verdict} %{key}";
const char alertmsg_default_digest_subject[] = "smtpguard digest: %{count} alerts";
const char alertmsg_default_body[] =
    "smtpguard on %{hostname} took action against %{key}.\n"
    "\n"
    "Rule:        %{rule} (%{verdict})\n"
    "Key:         %{key}\n"
    "Scores:      %{scores}\n"
    "Client:      %{client_name}[%{client_address}]\n"
    "HELO:        %{helo_name}\n"
    "SASL user:   %{sasl_username}\n"
    "Sender:      <%{sender}>\n"
    "Recipient:   <%{recipient}>\n"
    "Answer:      %{action}\n"
    "Time:        %{time}\n"
    "Suppressed:  %{suppressed} more alerts for this key since the last one\n"
    "\n"
    "Last messages of %{key}:\n"
    "%{evidence}\n";

enum alertmsg_var {
    AV_RULE, AV_VERDICT, AV_COUNTER, AV_KEY, AV_SCORE, AV_SCORES, AV_CLIENT_ADDRESS,
    AV_CLIENT_NAME, AV_HELO_NAME, AV_SASL_USERNAME, AV_SENDER, AV_RECIPIENT, AV_ACTION,
    AV_TIME, AV_HOSTNAME, AV_SUPPRESSED, AV_EVIDENCE, AV_COUNT, AV_N
};

static const char *const alertmsg_vars[AV_N] = {
    "rule", "verdict", "counter", "key", "score", "scores", "client_address",
    "client_name", "helo_name", "sasl_username", "sender", "recipient", "action",
    "time", "hostname", "suppressed", "evidence", "count",
};

void alert_info_free(struct alert_info *ai)
{
    char **f[] = {&ai->rule,          &ai->verdict,     &ai->counter,   &ai->key,
                  &ai->score,         &ai->scores,      &ai->client_address,
                  &ai->client_name,   &ai->helo_name,   &ai->sasl_username,
                  &ai->sender,        &ai->recipient,   &ai->action,    &ai->evidence,
                  &ai->hostname};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        free(*f[i]);
        *f[i] = NULL;
    }
}

static int alertmsg_lookup(const char *name, size_t len)
{
    for (int i = 0; i < AV_N; i++)
        if (strlen(alertmsg_vars[i]) == len && !memcmp(alertmsg_vars[i], name, len))
            return i;
    return -1;
}

int alertmsg_check(const char *tmpl, char *err, size_t errlen)
{
    for (const char *p = tmpl; (p = strstr(p, "%{")); ) {
        const char *end = strchr(p + 2, '}');
        if (!end) {
            snprintf(err, errlen, "unterminated %%{ at offset %zu", (size_t)(p - tmpl));
            return -EINVAL;
        }
        if (alertmsg_lookup(p + 2, (size_t)(end - p - 2)) < 0) {
            snprintf(err, errlen, "unknown variable %%{%.*s} (known: rule, verdict, counter, key, score, scores, client_address, client_name, helo_name, sasl_username, sender, recipient, action, time, hostname, suppressed, evidence, count)",
                     (int)(end - p - 2 > 64 ? 64 : end - p - 2), p + 2);
            return -EINVAL;
        }
        p = end + 1;
    }
    return 0;
}

/* alertmsg_clean - append s sanitized line by line: line breaks are kept
 * (or become spaces), everything else as template_sanitize does. */
static void alertmsg_clean(struct textbuf *out, const char *s, size_t len, bool one_line)
{
    char clean[2048];
    while (len > 0) {
        size_t n = 0;
        while (n < len && s[n] != '\n')
            n++;
        size_t chunk = n;
        if (chunk > 0 && s[chunk - 1] == '\r')
            chunk--;
        /* Lines longer than the scratch buffer go in pieces; a piece
         * boundary may split a UTF-8 sequence, which then shows '?'. */
        for (size_t off = 0; off < chunk; ) {
            size_t piece = chunk - off > 1024 ? 1024 : chunk - off;
            size_t c = template_sanitize(s + off, piece, clean, sizeof clean);
            textbuf_add(out, clean, c);
            off += piece;
        }
        if (n < len)
            textbuf_add(out, one_line ? " " : "\n", 1);
        s += n < len ? n + 1 : n;
        len -= n < len ? n + 1 : n;
    }
}

static const char *alertmsg_value(const struct alert_info *ai, int v, char *num, size_t cap)
{
    switch ((enum alertmsg_var)v) {
    case AV_RULE: return ai->rule;
    case AV_VERDICT: return ai->verdict;
    case AV_COUNTER: return ai->counter;
    case AV_KEY: return ai->key;
    case AV_SCORE: return ai->score;
    case AV_SCORES: return ai->scores;
    case AV_CLIENT_ADDRESS: return ai->client_address;
    case AV_CLIENT_NAME: return ai->client_name;
    case AV_HELO_NAME: return ai->helo_name;
    case AV_SASL_USERNAME: return ai->sasl_username;
    case AV_SENDER: return ai->sender;
    case AV_RECIPIENT: return ai->recipient;
    case AV_ACTION: return ai->action;
    case AV_EVIDENCE: return ai->evidence ? ai->evidence : "(no messages on record)";
    case AV_HOSTNAME: return ai->hostname;
    case AV_TIME: {
        time_t t = (time_t)ai->time;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(num, cap, "%Y-%m-%d %H:%M:%S UTC", &tm);
        return num;
    }
    case AV_SUPPRESSED:
        snprintf(num, cap, "%lu", ai->suppressed);
        return num;
    case AV_COUNT:
        snprintf(num, cap, "%lu", ai->count);
        return num;
    case AV_N:
        break;
    }
    return NULL;
}

void alertmsg_expand(const char *tmpl, const struct alert_info *ai, int one_line,
                     struct textbuf *out)
{
    const char *p = tmpl;
    char num[64];
    for (;;) {
        const char *pct = strchr(p, '%');
        const char *end = pct && pct[1] == '{' ? strchr(pct + 2, '}') : NULL;
        if (!pct) {
            alertmsg_clean(out, p, strlen(p), one_line);
            return;
        }
        alertmsg_clean(out, p, (size_t)(pct - p), one_line);
        if (pct[1] == '%') { /* "%%" is one '%', as in action messages */
            textbuf_add(out, "%", 1);
            p = pct + 2;
            continue;
        }
        if (!end) { /* a lone '%' is literal */
            textbuf_add(out, "%", 1);
            p = pct + 1;
            continue;
        }
        int v = alertmsg_lookup(pct + 2, (size_t)(end - pct - 2));
        const char *val = v >= 0 ? alertmsg_value(ai, v, num, sizeof num) : NULL;
        if (val)
            alertmsg_clean(out, val, strlen(val), one_line);
        p = end + 1;
    }
}

void alertmsg_date(time_t t, char *out, size_t cap)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    gmtime_r(&t, &tm);
    /* Spelled out: strftime's %a and %b follow the locale. */
    snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
             tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec);
}

static void alertmsg_base64(struct textbuf *out, const unsigned char *s, size_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        char q[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63],
                     i + 1 < n ? b64[(v >> 6) & 63] : '=', i + 2 < n ? b64[v & 63] : '='};
        textbuf_add(out, q, 4);
    }
}

static bool alertmsg_plain_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

/* alertmsg_subject - "Subject: ..." and CRLF: as it is when it is plain
 * ASCII, else as RFC 2047 B encoded words of at most 75 characters, cut
 * at character boundaries, on folded lines. */
static void alertmsg_subject(struct textbuf *out, const char *s)
{
    size_t n = strlen(s);
    if (n > 900) {
        n = 900; /* a header line stays below 998 bytes */
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--; /* between characters: a word must decode to whole ones */
    }
    if (alertmsg_plain_ascii(s, n) && strstr(s, "=?") == NULL) {
        textbuf_str(out, "Subject: ");
        textbuf_add(out, s, n);
        textbuf_str(out, "\r\n");
        return;
    }
    textbuf_str(out, "Subject:");
    size_t i = 0;
    while (i < n) {
        /* 45 bytes make 60 base64 characters, 72 with the wrapper: 73
         * with a continuation line's blank, but the first line has
         * "Subject: " before it, so its word takes 39 bytes (52 + 12 + 9
         * = 73): every line within RFC 2047's 76 characters. */
        size_t chunk = i ? 45 : 39;
        size_t j = i + chunk < n ? i + chunk : n;
        while (j < n && j > i + 1 && ((unsigned char)s[j] & 0xc0) == 0x80)
            j--;
        textbuf_str(out, i ? "\r\n =?UTF-8?B?" : " =?UTF-8?B?");
        alertmsg_base64(out, (const unsigned char *)s + i, j - i);
        textbuf_str(out, "?=");
        i = j;
    }
    textbuf_str(out, "\r\n");
}

/* alertmsg_needs_qp - anything but ASCII text with lines of at most
 * 998 bytes, or a line that starts with "From " (mangled by mbox). */
static bool alertmsg_needs_qp(const char *s, size_t n)
{
    size_t line = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') {
            line = 0;
            continue;
        }
        if (line == 0 && c == 'F' && n - i >= 5 && memcmp(s + i, "From ", 5) == 0)
            return true;
        if (c >= 0x80 || (c < 0x20 && c != '\t' && c != '\r') || c == 0x7f || ++line > 998)
            return true;
    }
    return false;
}

/* alertmsg_qp - RFC 2045 quoted-printable, lines of at most 76, CRLF. */
static void alertmsg_qp(struct textbuf *out, const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
            continue;
        if (c == '\n') {
            textbuf_str(out, "\r\n");
            col = 0;
            continue;
        }
        bool at_eol = i + 1 == n || s[i + 1] == '\n' || (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n');
        char enc[4];
        size_t w;
        if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol)) {
            enc[0] = (char)c;
            w = 1;
        } else {
            snprintf(enc, sizeof enc, "=%02X", c);
            w = 3;
        }
        /* A leading '.' is left to SMTP dot-stuffing; "From " is encoded
         * to survive mbox delivery. */
        if (col == 0 && c == 'F' && n - i >= 5 && !memcmp(s + i, "From ", 5)) {
            snprintf(enc, sizeof enc, "=%02X", c);
            w = 3;
        }
        if (col + w > 75) {
            textbuf_str(out, "=\r\n");
            col = 0;
        }
        textbuf_add(out, enc, w);
        col += w;
    }
}

/* alertmsg_crlf - the body as it is, with CRLF line ends. */
static void alertmsg_crlf(struct textbuf *out, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\n')
            continue;
        size_t end = i > run && s[i - 1] == '\r' ? i - 1 : i;
        textbuf_add(out, s + run, end - run);
        textbuf_str(out, "\r\n");
        run = i + 1;
    }
    textbuf_add(out, s + run, n - run);
}

void alertmsg_format(const struct alertmsg_head *h, const char *body, size_t body_len,
                     struct textbuf *out)
{
    char date[64];
    alertmsg_date(h->date, date, sizeof date);
    textbuf_printf(out, "Date: %s\r\n", date);
    textbuf_printf(out, "From: <%s>\r\n", h->from);
    textbuf_str(out, "To: ");
    for (size_t i = 0; i < h->n_to; i++)
        textbuf_printf(out, "%s<%s>", i ? ",\r\n " : "", h->to[i]);
    textbuf_str(out, "\r\n");
    alertmsg_subject(out, h->subject);
    textbuf_printf(out, "Message-ID: <%s>\r\n", h->message_id);
    textbuf_str(out, "MIME-Version: 1.0\r\n"
                     "Content-Type: text/plain; charset=UTF-8\r\n"
                     "Auto-Submitted: auto-generated\r\n");
    bool qp = alertmsg_needs_qp(body, body_len);
    textbuf_printf(out, "Content-Transfer-Encoding: %s\r\n\r\n", qp ? "quoted-printable" : "7bit");
    if (qp)
        alertmsg_qp(out, body, body_len);
    else
        alertmsg_crlf(out, body, body_len);
    if (out->len < 2 || memcmp(out->p + out->len - 2, "\r\n", 2) != 0)
        textbuf_str(out, "\r\n");
}
