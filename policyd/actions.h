/*
 * actions - turning a decision into Postfix's answer and into a record.
 *
 * actions_format() builds the access(5) action text for the action rule
 * that matched (or DUNNO/OK for no match/whitelist), with the rule's
 * message expanded and sanitized: no CR/LF or invalid UTF-8 reaches
 * Postfix. actions_log() writes the decision line (syslog/stderr, Postfix
 * style key=value) and, if configured, one JSON object per line to the
 * decision log. Both are synchronous and cheap; side effects that talk
 * to the store (delete) are started by the connection after the answer
 * is queued.
 */
#ifndef SMTPGUARD_ACTIONS_H
#define SMTPGUARD_ACTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include "request.h"
#include "rules.h"

#define ACTIONS_MAX_ANSWER 1024     /* bytes of one action text */

/* Everything a decision record needs. */
struct decision {
    unsigned long conn_id;      /* connection number, shown as c=%lx */
    unsigned long req_no;       /* request number on that connection */
    const struct rules *rules;
    struct request *req;
    const struct eval *ev;
    const char *answer;         /* the action text sent to Postfix */
    bool store_failed;          /* answered with on_error */
    bool dns_failed;            /* answered a temporary failure: DNS (on_error: defer) */
    double elapsed_ms;          /* from request parsed to answer */
};

/* actions_format - the action text for ar (NULL = no rule matched:
 * "DUNNO"). Returns the length written into out (< cap). */
size_t actions_format(const struct rules *r, const struct action_rule *ar, struct request *req,
                      const struct eval *ev, char *out, size_t cap);

/* actions_log_wanted - whether this decision produces a log line: any
 * verdict other than a plain DUNNO, a `log` side effect, a log-only
 * match, or a store failure. */
bool actions_log_wanted(const struct decision *d);

/* actions_log - write the decision line (when actions_log_wanted) and
 * the JSON record (every decision: it is the full record). */
void actions_log(const struct decision *d);

/* actions_json_open - (re)open the JSON decision log; NULL closes it.
 * Returns 0 or a negative errno. */
int actions_json_open(const char *path);
void actions_json_close(void);

/* actions_json_write - one more line (with its newline) to the JSON log,
 * if it is open: the message records of tracking go there too. */
void actions_json_write(const char *line, size_t len);

/* A sink that also gets every decision's JSON record (without the
 * newline), e.g. the Redis event stream; valid during the call only. */
typedef void (*actions_sink_fn)(void *arg, const struct decision *d, const char *json, size_t len);
void actions_set_sink(actions_sink_fn fn, void *arg);

#endif
