/*
 * smtpc - a small asynchronous SMTP client on the libuv loop, to hand one
 * alert mail to a relay.
 *
 * smtpc_start() connects to an IP address and port and speaks EHLO (HELO
 * if EHLO is refused), MAIL FROM, RCPT TO for each recipient, DATA, the
 * dot-stuffed message, QUIT. Every step has the same deadline (timeout
 * per step, not per mail), so a relay that accepts and then stalls costs
 * at most one timeout per step, on the loop, never in a policy answer.
 *
 * The done callback runs exactly once, always from the loop (never from
 * inside smtpc_start), after every handle is closed:
 *   0          the relay took the message (some recipients may have been
 *              refused; detail says so)
 *   -EAGAIN    try again later: no connection, a timeout, a 4xx reply,
 *              a broken reply
 *   -EPERM     the relay refused for good (5xx)
 *   -ECANCELED smtpc_cancel() was called
 * detail is a short text for the log (the relay's last reply, cut), valid
 * during the callback only. The job's strings are copied at start.
 *
 * smtpc_reply_parse(), smtpc_dot_stuff() and smtpc_parse_address() are
 * pure and unit tested.
 */
#ifndef SMTPGUARD_SMTPC_H
#define SMTPGUARD_SMTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "textbuf.h"

#define SMTPC_MAX_REPLY 8192        /* bytes of one (multi-line) reply */

struct smtpc_job {
    const char *helo;           /* EHLO name */
    const char *from;           /* envelope sender, "" for <> */
    char *const *to;            /* envelope recipients */
    size_t n_to;
    const char *data;           /* the message, CRLF line ends, not dot-stuffed */
    size_t len;                 /* bytes */
    bool *temp_refused;         /* optional, n_to entries: set for each recipient the
                                 * relay refused for now (4xx), to be tried again */
};

typedef void (*smtpc_done_cb)(void *arg, int status, const char *detail);

struct smtpc;

/* smtpc_start - deliver job to addr; see above for the callback. */
struct smtpc *smtpc_start(uv_loop_t *loop, const struct sockaddr *addr, const struct smtpc_job *job,
                          unsigned timeout_ms, smtpc_done_cb cb, void *arg);

/* smtpc_cancel - stop now; the callback follows with -ECANCELED. */
void smtpc_cancel(struct smtpc *c);

/* smtpc_reply_parse - a complete reply at the start of buf? Returns 1
 * (*code, *used = bytes through its last line), 0 (need more bytes), or
 * -EPROTO (not an SMTP reply). */
int smtpc_reply_parse(const char *buf, size_t len, size_t *used, int *code);

/* smtpc_dot_stuff - data with CRLF line ends, leading dots doubled and
 * the final ".\r\n" appended. */
void smtpc_dot_stuff(const char *data, size_t len, struct textbuf *out);

/* smtpc_parse_address - "192.0.2.1:25", "[2001:db8::1]:2525", "192.0.2.1"
 * (port 25). Returns 0 or -EINVAL. */
int smtpc_parse_address(const char *s, struct sockaddr_storage *out);

#endif
