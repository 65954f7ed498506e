/*
 * record - see record.h.
 *
 * The format is a strict subset of JSON that this file writes and reads
 * back bit for bit; the reader also takes what other JSON tools write for
 * it (any key order, whitespace, unknown keys with scalar values, \uXXXX
 * escapes), and rejects the rest with a reason, so a corrupt or foreign
 * line is reported and skipped, never guessed at.
 */
#include "record.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "sha1.h"
#include "xalloc.h"

int record_redact_parse(const char *s, enum record_redact *out)
{
    if (!strcmp(s, "none"))
        *out = RECORD_REDACT_NONE;
    else if (!strcmp(s, "localpart"))
        *out = RECORD_REDACT_LOCALPART;
    else if (!strcmp(s, "hash"))
        *out = RECORD_REDACT_HASH;
    else
        return -EINVAL;
    return 0;
}

/* ---- writing ---- */

struct recbuf {
    char *p;
    size_t len;                 /* bytes written */
    size_t cap;                 /* bytes available */
    bool overflow;              /* something did not fit */
};

static void rb_add(struct recbuf *b, const char *s, size_t n)
{
    if (b->overflow || b->cap - b->len < n) {
        b->overflow = true;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void rb_str(struct recbuf *b, const char *s)
{
    rb_add(b, s, strlen(s));
}

/* rb_json - a JSON string body: '"' and '\\' escaped, controls \u00XX. */
static void rb_json(struct recbuf *b, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f)
            continue;
        rb_add(b, s + run, i - run);
        char esc[8];
        if (ch == '"' || ch == '\\')
            snprintf(esc, sizeof esc, "\\%c", ch);
        else
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        rb_str(b, esc);
        run = i + 1;
    }
    rb_add(b, s + run, n - run);
}

static bool record_redacted_attr(enum attr a)
{
    return a == ATTR_SENDER || a == ATTR_RECIPIENT || a == ATTR_SASL_SENDER ||
           a == ATTR_SASL_USERNAME;
}

/* rb_redacted - an address with its local part redacted. */
static void rb_redacted(struct recbuf *b, const char *v, size_t n, enum record_redact redact)
{
    const char *at = NULL;
    for (size_t i = n; i > 0; i--)
        if (v[i - 1] == '@') {
            at = v + i - 1;
            break;
        }
    size_t local = at ? (size_t)(at - v) : n;
    if (n == 0) {
        /* The null sender stays what it is. */
    } else if (redact == RECORD_REDACT_LOCALPART) {
        rb_str(b, "*");
    } else {
        /* The whole local part, folded, in pieces: two that differ only
         * past any fixed buffer must stay two keys. */
        char lower[512], hex[SHA1_HEX_LEN + 1];
        struct sha1 h;
        unsigned char dig[SHA1_DIGEST_LEN];
        sha1_init(&h);
        sha1_update(&h, "smtpguard-record:", 17);
        for (size_t off = 0; off < local; off += sizeof lower) {
            size_t m = local - off < sizeof lower ? local - off : sizeof lower;
            for (size_t i = 0; i < m; i++) {
                char ch = v[off + i];
                lower[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
            }
            sha1_update(&h, lower, m);
        }
        sha1_final(&h, dig);
        for (int i = 0; i < 8; i++)
            snprintf(hex + 2 * i, 3, "%02x", dig[i]);
        rb_str(b, "h");
        rb_add(b, hex, 16);
    }
    if (at)
        rb_json(b, at, n - local);
}

size_t record_format(struct request *req, double t, enum record_redact redact, char *out,
                     size_t cap)
{
    struct recbuf b = {out, 0, cap, false};
    char head[64];
    snprintf(head, sizeof head, "{\"t\":%.6f,\"a\":{", t);
    rb_str(&b, head);
    bool first = true;
    for (int a = 0; a < ATTR_WIRE_COUNT; a++) {
        size_t n;
        const char *v = request_get(req, (enum attr)a, &n);
        if (!v)
            continue;
        rb_str(&b, first ? "\"" : ",\"");
        rb_str(&b, attr_name((enum attr)a));
        rb_str(&b, "\":\"");
        if (redact != RECORD_REDACT_NONE && record_redacted_attr((enum attr)a))
            rb_redacted(&b, v, n, redact);
        else
            rb_json(&b, v, n);
        rb_str(&b, "\"");
        first = false;
    }
    rb_str(&b, "}}\n");
    return b.overflow ? 0 : b.len;
}

/* ---- reading ---- */

struct rp {
    char *p;                    /* next byte */
    char *end;                  /* end of the line */
    const char *why;            /* first problem */
};

static void rp_ws(struct rp *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\r'))
        r->p++;
}

static bool rp_char(struct rp *r, char c, const char *why)
{
    rp_ws(r);
    if (r->p < r->end && *r->p == c) {
        r->p++;
        return true;
    }
    if (!r->why)
        r->why = why;
    return false;
}

static int rp_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* rp_hex4 - the 4 hex digits at p: their value, -1 when fewer than 4
 * bytes are left, -2 when one is no hex digit. */
static long rp_hex4(const char *p, const char *end)
{
    long v = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int h = rp_hex(p[i]);
        if (h < 0)
            return -2;
        v = v * 16 + h;
    }
    return v;
}

/* rp_string - a JSON string, unescaped in place (never longer than its
 * source). On success *s and *n are the value, NUL-terminated. */
static bool rp_string(struct rp *r, char **s, size_t *n)
{
    if (!rp_char(r, '"', "expected a string"))
        return false;
    char *out = r->p, *start = r->p;
    while (r->p < r->end) {
        char c = *r->p++;
        if (c == '"') {
            *s = start;
            *n = (size_t)(out - start);
            *out = '\0'; /* the closing quote's place or earlier */
            return true;
        }
        if ((unsigned char)c < 0x20) {
            r->why = "control character in a string";
            return false;
        }
        if (c != '\\') {
            *out++ = c;
            continue;
        }
        if (r->p >= r->end)
            break;
        c = *r->p++;
        switch (c) {
        case '"':
        case '\\':
        case '/':
            *out++ = c;
            break;
        case 'b':
            *out++ = '\b';
            break;
        case 'f':
            *out++ = '\f';
            break;
        case 'n':
            *out++ = '\n';
            break;
        case 'r':
            *out++ = '\r';
            break;
        case 't':
            *out++ = '\t';
            break;
        case 'u': {
            long cp = rp_hex4(r->p, r->end);
            if (cp < 0) {
                r->why = cp == -1 ? "short \\u escape" : "bad \\u escape";
                return false;
            }
            r->p += 4;
            /* A surrogate pair (what JSON tools write for characters past
             * U+FFFF, "\ud83d\ude00") is one character: 12 source bytes
             * make 4. A lone surrogate is kept as it came. */
            long lo = cp >= 0xd800 && cp < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' &&
                              r->p[1] == 'u'
                          ? rp_hex4(r->p + 2, r->end)
                          : -1;
            if (lo >= 0xdc00 && lo < 0xe000) {
                r->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                *out++ = (char)(0xf0 | (cp >> 18));
                *out++ = (char)(0x80 | ((cp >> 12) & 0x3f));
                *out++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                *out++ = (char)(0x80 | (cp & 0x3f));
                break;
            }
            /* 6 source bytes make at most 3: the in-place copy is safe. */
            if (cp < 0x80) {
                *out++ = (char)cp;
            } else if (cp < 0x800) {
                *out++ = (char)(0xc0 | (cp >> 6));
                *out++ = (char)(0x80 | (cp & 0x3f));
            } else {
                *out++ = (char)(0xe0 | (cp >> 12));
                *out++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                *out++ = (char)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default:
            r->why = "bad escape in a string";
            return false;
        }
    }
    r->why = "unterminated string";
    return false;
}

static bool rp_number(struct rp *r, double *v)
{
    rp_ws(r);
    char buf[64];
    size_t n = 0;
    while (r->p + n < r->end && n < sizeof buf - 1 && strchr("+-.0123456789eE", r->p[n]))
        n++;
    if (n == 0 || n == sizeof buf - 1) {
        r->why = "expected a number";
        return false;
    }
    memcpy(buf, r->p, n);
    buf[n] = '\0';
    char *end;
    *v = strtod(buf, &end);
    if (*end) {
        r->why = "bad number";
        return false;
    }
    r->p += n;
    return true;
}

/* rp_skip_scalar - an unknown key's value: string, number, true, false, null. */
static bool rp_skip_scalar(struct rp *r)
{
    rp_ws(r);
    if (r->p >= r->end) {
        r->why = "value missing";
        return false;
    }
    if (*r->p == '"') {
        char *s;
        size_t n;
        return rp_string(r, &s, &n);
    }
    static const char *const words[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t wl = strlen(words[i]);
        if ((size_t)(r->end - r->p) >= wl && !memcmp(r->p, words[i], wl)) {
            r->p += wl;
            return true;
        }
    }
    double d;
    if (*r->p == '{' || *r->p == '[') {
        r->why = "unexpected object or list";
        return false;
    }
    return rp_number(r, &d);
}

static bool rp_attrs(struct rp *r, struct request *req)
{
    if (!rp_char(r, '{', "\"a\" must be an object"))
        return false;
    rp_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return true;
    }
    for (;;) {
        char *k, *v;
        size_t kn, vn;
        if (!rp_string(r, &k, &kn) || !rp_char(r, ':', "expected ':'"))
            return false;
        rp_ws(r);
        if (r->p < r->end && *r->p != '"') {
            r->why = "attribute values must be strings";
            return false;
        }
        if (!rp_string(r, &v, &vn))
            return false;
        int a = attr_lookup(k, kn);
        if (a >= 0 && a < ATTR_WIRE_COUNT)
            request_set(req, (enum attr)a, v, vn);
        rp_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        return rp_char(r, '}', "expected ',' or '}' in \"a\"");
    }
}

int record_parse(char *line, size_t len, double *t, struct request *req, const char **why)
{
    struct rp r = {line, line + len, NULL};
    bool have_t = false, have_a = false;
    request_reset(req);
    if (!rp_char(&r, '{', "not a JSON object"))
        goto bad;
    for (;;) {
        char *k;
        size_t kn;
        if (!rp_string(&r, &k, &kn) || !rp_char(&r, ':', "expected ':'"))
            goto bad;
        if (kn == 1 && k[0] == 't') {
            if (!rp_number(&r, t))
                goto bad;
            have_t = true;
        } else if (kn == 1 && k[0] == 'a') {
            if (!rp_attrs(&r, req))
                goto bad;
            have_a = true;
        } else if (!rp_skip_scalar(&r)) {
            goto bad;
        }
        rp_ws(&r);
        if (r.p < r.end && *r.p == ',') {
            r.p++;
            continue;
        }
        if (!rp_char(&r, '}', "expected ',' or '}'"))
            goto bad;
        break;
    }
    rp_ws(&r);
    if (r.p != r.end) {
        r.why = "text after the object";
        goto bad;
    }
    if (!have_t || !have_a) {
        r.why = !have_t ? "no \"t\" (time)" : "no \"a\" (attributes)";
        goto bad;
    }
    return 0;
bad:
    *why = r.why ? r.why : "malformed";
    return -EINVAL;
}

/* ---- the process-wide writer ---- */

static struct {
    FILE *fp;
    struct record_settings s;   /* copy; file owned */
    unsigned long long size;    /* bytes in the current file */
    unsigned long dropped;      /* requests not recorded (write errors) */
    char *line;                 /* RECORD_MAX_LINE bytes, once recording */
    struct log_limiter lim;     /* write errors */
} rec;

static int record_open_file(void)
{
    rec.fp = fopen(rec.s.file, "a");
    if (!rec.fp)
        return -errno;
    struct stat st;
    rec.size = fstat(fileno(rec.fp), &st) == 0 ? (unsigned long long)st.st_size : 0;
    return 0;
}

void record_close(void)
{
    if (rec.fp)
        fclose(rec.fp);
    rec.fp = NULL;
    free(rec.s.file);
    rec.s.file = NULL;
    free(rec.line);
    rec.line = NULL;
}

int record_open(const struct record_settings *s)
{
    record_close();
    if (!s || !s->file)
        return 0;
    rec.s = *s;
    rec.s.file = xstrdup(s->file);
    rec.line = xmalloc(RECORD_MAX_LINE);
    int rc = record_open_file();
    if (rc < 0) {
        free(rec.s.file);
        rec.s.file = NULL;
        free(rec.line);
        rec.line = NULL;
    }
    return rc;
}

int record_reopen(void)
{
    if (!rec.s.file)
        return 0;
    if (rec.fp)
        fclose(rec.fp);
    rec.fp = NULL;
    return record_open_file();
}

bool record_active(void)
{
    return rec.fp != NULL;
}

/* record_rotate - FILE.(k-1) -> FILE.k ..., FILE -> FILE.1, new FILE. */
static void record_rotate(void)
{
    fclose(rec.fp);
    rec.fp = NULL;
    if (rec.s.keep == 0) {
        remove(rec.s.file);
    } else {
        size_t n = strlen(rec.s.file) + 16;
        char *from = xmalloc(n), *to = xmalloc(n);
        for (unsigned k = rec.s.keep; k > 1; k--) {
            snprintf(from, n, "%s.%u", rec.s.file, k - 1);
            snprintf(to, n, "%s.%u", rec.s.file, k);
            rename(from, to); /* a missing one is fine */
        }
        snprintf(to, n, "%s.1", rec.s.file);
        if (rename(rec.s.file, to) < 0)
            log_warn_every(&rec.lim, 60, "record %s: cannot rotate: %s", rec.s.file,
                           strerror(errno));
        free(from);
        free(to);
    }
    int rc = record_open_file();
    if (rc < 0)
        log_warn_every(&rec.lim, 60, "record %s: cannot reopen after rotation: %s", rec.s.file,
                       strerror(-rc));
}

void record_write(struct request *req, double t)
{
    if (!rec.fp)
        return;
    if (!(t > 0)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    }
    size_t n = record_format(req, t, rec.s.redact, rec.line, RECORD_MAX_LINE);
    if (n == 0) {
        log_warn_every(&rec.lim, 60, "record %s: a request too large to record was left out",
                       rec.s.file);
        return;
    }
    if (rec.s.max_size && rec.size > 0 && rec.size + n > rec.s.max_size) {
        record_rotate();
        if (!rec.fp)
            return;
    }
    /* One write(2) a line (the FILE only holds the descriptor: nothing
     * is buffered in it). A short write (a full disk, a size limit) left
     * half a line that the next one was glued to, spoiling both for
     * replay: the part written is cut off again, so the file keeps whole
     * lines, and the loss is counted. */
    int fd = fileno(rec.fp);
    size_t done = 0;
    int err = 0;
    while (done < n) {
        ssize_t w = write(fd, rec.line + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : ENOSPC;
            break;
        }
        done += (size_t)w; /* a short write: the rest, or why not */
    }
    if (done != n) {
        struct stat st;
        if (done > 0 && fstat(fd, &st) == 0 && (size_t)st.st_size >= done)
            (void)!ftruncate(fd, st.st_size - (off_t)done);
        rec.dropped++;
        log_warn_every(&rec.lim, 60, "record %s: write failed: %s; %lu requests not recorded so far",
                       rec.s.file, strerror(err), rec.dropped);
        return;
    }
    rec.size += n;
}
