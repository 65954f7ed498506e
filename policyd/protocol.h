/*
 * protocol - the Postfix policy delegation protocol (SMTPD_POLICY_README):
 * requests are "name=value\n" lines ended by an empty line; answers are
 * "action=...\n\n".
 *
 * The parser is incremental and zero-copy. protocol_scan() is called on
 * the connection's read buffer after every read; it remembers how far it
 * got, checks the limits on the way (so an attacker cannot make us buffer
 * more than max_request bytes) and reports when a whole request is there.
 * protocol_parse() then splits that request in place (the '\n' and the
 * first '=' of each line become NULs) and fills a struct request whose
 * values point into the buffer.
 *
 * Errors are reported as a status plus a static, human-readable reason;
 * the caller logs it and closes that connection only. Pure: no I/O.
 */
#ifndef SMTPGUARD_PROTOCOL_H
#define SMTPGUARD_PROTOCOL_H

#include <stddef.h>

#include "request.h"

struct protocol_limits {
    size_t max_line;            /* bytes in one name=value line, without '\n' */
    size_t max_request;         /* bytes in one request, final empty line included */
    unsigned max_attrs;         /* lines in one request */
};

#define PROTOCOL_DEFAULT_MAX_LINE 4096
#define PROTOCOL_DEFAULT_MAX_REQUEST 65536
#define PROTOCOL_DEFAULT_MAX_ATTRS 128

/* Scanner state between reads; zero it (protocol_scan_reset) per request. */
struct protocol_scan {
    size_t pos;                 /* bytes of the buffer already examined */
    size_t line_start;          /* offset where the current line began */
    unsigned lines;             /* complete lines seen in this request */
};

enum protocol_status {
    PROTOCOL_NEED_MORE,         /* no complete request yet */
    PROTOCOL_READY,             /* *req_len bytes hold one whole request */
    PROTOCOL_ERROR              /* limits exceeded or malformed: close */
};

void protocol_scan_reset(struct protocol_scan *scan);

/*
 * protocol_scan - look for the end of a request in buf[0..len).
 * On PROTOCOL_READY, *req_len is the request's length including the
 * terminating empty line; bytes after it belong to the next request.
 * On PROTOCOL_ERROR, *why says what was wrong.
 */
enum protocol_status protocol_scan(struct protocol_scan *scan,
                                   const struct protocol_limits *lim,
                                   const char *buf, size_t len,
                                   size_t *req_len, const char **why);

/*
 * protocol_parse - split buf[0..req_len) (as found by protocol_scan) in
 * place into req (which is reset first). Unknown attribute names are
 * counted and ignored; a repeated attribute keeps its last value; a
 * "\r\n" line end is accepted. Returns 0, or -EINVAL with *why for a
 * line without '=' or with an empty name.
 */
int protocol_parse(char *buf, size_t req_len, struct request *req, const char **why);

/*
 * protocol_format_answer - write "action=ACTION\n\n" into out (cap bytes).
 * action must already be sanitized (no CR/LF). Returns the length, or 0
 * when it does not fit.
 */
size_t protocol_format_answer(char *out, size_t cap, const char *action, size_t action_len);

#endif
