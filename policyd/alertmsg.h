/*
 * alertmsg - the text of an alert mail: subject and body templates, and
 * the RFC 5322 message around them.
 *
 * Templates use "%{name}" like action messages, with the alert's own
 * variables (alertmsg_vars): rule, verdict, counter, key, score, scores,
 * client_address, client_name, helo_name, sasl_username, sender,
 * recipient, action, time, hostname, suppressed, evidence, count.
 * Unknown names are found at config load (alertmsg_check). Values are
 * sanitized: invalid UTF-8 and control characters become '?', and in the
 * subject line breaks become spaces.
 *
 * alertmsg_format() writes a complete message with CRLF line ends:
 * Date, From, To, Subject (RFC 2047 encoded words when it is not plain
 * ASCII), Message-ID, MIME-Version, Content-Type text/plain UTF-8,
 * Auto-Submitted (RFC 3834: abuse desks' autoresponders stay quiet),
 * and a body sent as 7bit when it is ASCII with short lines, else as
 * quoted-printable, so that it crosses any relay unchanged (no
 * 8BITMIME or SMTPUTF8 needed). Addresses must be plain ASCII
 * (the config checks them).
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_ALERTMSG_H
#define SMTPGUARD_ALERTMSG_H

#include <stddef.h>
#include <time.h>

#include "textbuf.h"

/* One alert's facts; every string may be NULL (expands to ""). */
struct alert_info {
    char *rule, *verdict, *counter, *key, *score, *scores;
    char *client_address, *client_name, *helo_name, *sasl_username, *sender, *recipient;
    char *action;
    char *evidence;             /* lines separated by '\n', already sanitized */
    char *hostname;             /* this smtpguard's host */
    double time;                /* wall clock seconds of the trip */
    unsigned long suppressed;   /* alerts of this (rule, key) swallowed since the last */
    unsigned long count;        /* digest: alerts in the mail */
};

void alert_info_free(struct alert_info *ai);

/* alertmsg_check - 0, or -EINVAL with err naming the problem. */
int alertmsg_check(const char *tmpl, char *err, size_t errlen);

/* alertmsg_expand - tmpl with ai's values appended to out; one_line
 * turns line breaks (in values and text) into spaces. */
void alertmsg_expand(const char *tmpl, const struct alert_info *ai, int one_line,
                     struct textbuf *out);

struct alertmsg_head {
    const char *from;
    char *const *to;
    size_t n_to;
    const char *subject;        /* UTF-8, one line */
    time_t date;
    const char *message_id;     /* without the angle brackets */
};

/* alertmsg_format - the whole message, CRLF line ends, into out. */
void alertmsg_format(const struct alertmsg_head *h, const char *body, size_t body_len,
                     struct textbuf *out);

/* alertmsg_date - RFC 5322 date-time in UTC ("Mon, 02 Jan 2006 15:04:05 +0000"). */
void alertmsg_date(time_t t, char *out, size_t cap);

/* Defaults for alerts.subject and alerts.body. */
extern const char alertmsg_default_subject[];
extern const char alertmsg_default_body[];
extern const char alertmsg_default_digest_subject[];

#endif
