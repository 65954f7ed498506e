/*
 * protocol - see protocol.h.
 *
 * Scanning and splitting are two passes on purpose. protocol_scan() runs
 * after every read on a request that may still be incomplete, so it only
 * looks for line ends, counts lines and checks the limits, and it resumes
 * where the previous call stopped: each byte is examined once however the
 * peer slices its writes (memchr does the looking, so that is fast).
 * protocol_parse() runs once per complete request and may then write into
 * the buffer.
 *
 * Limits are checked on the bytes already received, before the request is
 * complete: a line longer than max_line or a request longer than
 * max_request fails as soon as the excess arrives, so a peer can never make
 * a connection buffer more than max_request bytes. Only the first
 * max_request bytes of the buffer are ever examined; bytes past the end of
 * a complete request (a pipelining client) are left for the next call.
 *
 * Line ends are "\n" (what Postfix sends) or "\r\n"; the '\r' does not
 * count against max_line, so the same request passes the same limits
 * either way. A NUL byte is refused by the scanner, which lets the parser
 * and every later consumer treat values as C strings.
 */
#include "protocol.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/*
 * A limit error names the limit in force ("line longer than 4096 bytes"),
 * so the operator sees which setting a client ran into. protocol.h
 * promises a reason the caller neither owns nor frees, so it is formatted
 * into static storage: valid until the next error of that kind on the same
 * thread, which is longer than the caller needs to log it. Errors end the
 * connection, so the snprintf() is never on the hot path.
 */
static _Thread_local char why_buf_line[64];
static _Thread_local char why_buf_request[64];
static _Thread_local char why_buf_attrs[64];

static const char *why_line(const struct protocol_limits *lim)
{
    snprintf(why_buf_line, sizeof why_buf_line, "line longer than %zu bytes", lim->max_line);
    return why_buf_line;
}

static const char *why_request(const struct protocol_limits *lim)
{
    snprintf(why_buf_request, sizeof why_buf_request, "request larger than %zu bytes",
             lim->max_request);
    return why_buf_request;
}

static const char *why_attrs(const struct protocol_limits *lim)
{
    snprintf(why_buf_attrs, sizeof why_buf_attrs, "more than %u attributes", lim->max_attrs);
    return why_buf_attrs;
}

void protocol_scan_reset(struct protocol_scan *scan)
{
    scan->pos = 0;
    scan->line_start = 0;
    scan->lines = 0;
}

/* protocol_scan - find the empty line that ends a request, checking limits. */
enum protocol_status protocol_scan(struct protocol_scan *scan,
                                   const struct protocol_limits *lim,
                                   const char *buf, size_t len,
                                   size_t *req_len, const char **why)
{
    size_t end = len < lim->max_request ? len : lim->max_request;
    size_t pos = scan->pos;
    size_t line_start = scan->line_start;

    /* The caller gave a shorter buffer than last time: start over. */
    if (pos > len) {
        protocol_scan_reset(scan);
        pos = line_start = 0;
    }

    /* One search for a NUL over everything not yet examined, rather
     * than one per line: lines are short and each memchr() call costs
     * more than the bytes it looks at. Lines are examined up to the NUL
     * only; a request that ends before it is good, and the NUL then
     * belongs to the next one. */
    const char *nul = pos < end ? memchr(buf + pos, '\0', end - pos) : NULL;
    size_t upto = nul ? (size_t)(nul - buf) : end;

    while (pos < upto) {
        const char *nl = memchr(buf + pos, '\n', upto - pos);
        size_t stop = nl ? (size_t)(nl - buf) : upto;

        if (!nl) {
            pos = upto;
            break;
        }
        size_t line_len = stop - line_start;
        if (line_len > 0 && buf[stop - 1] == '\r')
            line_len--;
        if (line_len > lim->max_line) {
            scan->pos = stop;
            *why = why_line(lim);
            return PROTOCOL_ERROR;
        }
        if (line_len == 0) {
            *req_len = stop + 1;
            /* Ready for the next request, which the caller passes from its start. */
            protocol_scan_reset(scan);
            return PROTOCOL_READY;
        }
        if (++scan->lines > lim->max_attrs) {
            scan->pos = stop;
            *why = why_attrs(lim);
            return PROTOCOL_ERROR;
        }
        pos = line_start = stop + 1;
    }
    if (nul) {
        scan->pos = pos;
        *why = "NUL byte in request";
        return PROTOCOL_ERROR;
    }
    scan->pos = pos;
    scan->line_start = line_start;

    /* A partial line may end in the '\r' of a "\r\n" still on its way. */
    size_t partial = pos - line_start;
    if (partial > lim->max_line &&
        !(partial == lim->max_line + 1 && buf[pos - 1] == '\r')) {
        *why = why_line(lim);
        return PROTOCOL_ERROR;
    }
    /* No end within the first max_request bytes, and more are here. */
    if (len > lim->max_request) {
        *why = why_request(lim);
        return PROTOCOL_ERROR;
    }
    return PROTOCOL_NEED_MORE;
}

/*
 * protocol_parse - split the request in place and fill req.
 *
 * Relies on protocol_scan() having refused NUL bytes: names are compared
 * by length, but values are handed on as C strings.
 */
int protocol_parse(char *buf, size_t req_len, struct request *req, const char **why)
{
    char *p = buf;
    char *end = buf + req_len;

    request_reset(req);
    for (;;) {
        char *nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
        if (!nl) {
            *why = "request without an empty line at its end";
            return -EINVAL;
        }
        char *line_end = nl;
        if (line_end > p && line_end[-1] == '\r')
            line_end--;
        if (line_end == p)
            return 0;

        char *eq = memchr(p, '=', (size_t)(line_end - p));
        if (!eq) {
            *why = "line without '='";
            return -EINVAL;
        }
        if (eq == p) {
            *why = "empty attribute name";
            return -EINVAL;
        }
        *eq = '\0';
        *line_end = '\0';

        /* Derived names are ours: a peer must not be able to set them. */
        int a = attr_lookup(p, (size_t)(eq - p));
        if (a < 0 || a >= ATTR_WIRE_COUNT)
            req->unknown_count++;
        else
            request_set(req, (enum attr)a, eq + 1, (size_t)(line_end - eq - 1));
        p = nl + 1;
    }
}

/*
 * protocol_format_answer - "action=...\n\n" (not NUL-terminated).
 *
 * The action is checked again for CR, LF and NUL even though the caller
 * sanitized it: one stray newline would let text from a template end our
 * answer early and desynchronize the connection with Postfix. An empty
 * action does not fit either; Postfix would reject it.
 */
size_t protocol_format_answer(char *out, size_t cap, const char *action, size_t action_len)
{
    static const char prefix[] = "action=";
    const size_t plen = sizeof prefix - 1;

    if (action_len == 0 || cap < plen + 2 || action_len > cap - plen - 2)
        return 0;
    for (size_t i = 0; i < action_len; i++)
        if (action[i] == '\n' || action[i] == '\r' || action[i] == '\0')
            return 0;
    memcpy(out, prefix, plen);
    memcpy(out + plen, action, action_len);
    out[plen + action_len] = '\n';
    out[plen + action_len + 1] = '\n';
    return plen + action_len + 2;
}
