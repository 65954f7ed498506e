/*
 * track - message tracking: the policy requests of one message joined
 * into one record.
 *
 * Postfix asks about a message several times (each RCPT, DATA,
 * END-OF-MESSAGE) and gives every request of one mail transaction the
 * same `instance` attribute (from MAIL FROM on: a MAIL-stage request still
 * carries the previous one, so MAIL requests are not joined). track_note() joins the requests by instance:
 * recipients accumulate across RCPT requests (those smtpguard refused are
 * kept apart), size and queue_id are taken at END-OF-MESSAGE, and every
 * decision with a rule is kept (state, rule, verdict, recipient). The
 * record is closed
 *   - complete, by its END-OF-MESSAGE request;
 *   - aborted, when the same policy connection shows another instance
 *     (one smtpd process serves one session at a time, so its previous
 *     transaction is over: RSET, QUIT, or every recipient refused), when
 *     it was idle longer than the idle time (track_expire), or when the
 *     table is full and it is the least recently used one.
 * A closed record goes to the emit callback if any of its requests was
 * `wanted` (the tracking rule matched), then to the history ring that
 * alert evidence is taken from (every message, wanted or not).
 *
 * Memory is bounded: at most max_open open records, history closed ones,
 * and every field, list and string of a record has a cap.
 *
 * Ownership: the track owns every record. A record passed to the emit
 * callback, or returned by track_recent(), is valid until the next call
 * that changes the track (note, expire, configure, free).
 * Pure: no I/O; the caller passes the time.
 */
#ifndef SMTPGUARD_TRACK_H
#define SMTPGUARD_TRACK_H

#include <stdbool.h>
#include <stddef.h>

#include "textbuf.h"

#define TRACK_MAX_RCPTS 64          /* recipients listed per record; more are counted */
#define TRACK_MAX_KEYS 16           /* counter keys per record */
#define TRACK_MAX_RULES 16          /* rule names per record */
#define TRACK_MAX_VERDICTS 16       /* decisions per record */
#define TRACK_FIELD_MAX 256         /* bytes kept of one attribute */

enum track_status {
    TRACK_OPEN,
    TRACK_COMPLETE,             /* END-OF-MESSAGE seen */
    TRACK_ABORTED               /* the transaction ended without one */
};

const char *track_status_name(enum track_status s);

struct track_verdict {
    char *state;                /* protocol_state */
    char *rule;
    char *verdict;              /* verdict name, e.g. "reject" */
    char *recipient;            /* for RCPT decisions, or NULL */
};

struct track_msg {
    struct track_msg *inext;    /* instance hash chain */
    struct track_msg *cnext;    /* connection hash chain */
    struct track_msg *prev, *next; /* least recently used first */
    unsigned long conn_id;      /* the policy connection */
    char *instance;             /* Postfix's transaction id */
    double start;               /* wall clock seconds, first request */
    double last;                /* wall clock seconds, latest request */
    enum track_status status;
    bool wanted;                /* the tracking rule matched one of its requests */
    char *queue_id, *client_address, *client_name, *helo_name, *sasl_username, *sender;
    char *rcpts[TRACK_MAX_RCPTS]; /* accepted by smtpguard */
    size_t n_rcpts;
    unsigned long rcpts_total;  /* accepted, including those not listed */
    unsigned long refused;      /* recipients smtpguard refused (defer, reject ...) */
    long long size;             /* bytes; -1 unknown */
    long recipient_count;       /* Postfix's count at END-OF-MESSAGE; -1 unknown */
    char *keys[TRACK_MAX_KEYS]; /* counter keys this message touched, "ip:192.0.2.7" */
    size_t n_keys;
    char *rules[TRACK_MAX_RULES]; /* rules that fired, each once */
    size_t n_rules;
    struct track_verdict verdicts[TRACK_MAX_VERDICTS];
    size_t n_verdicts;
};

struct track_config {
    size_t max_open;            /* open records at most */
    double idle;                /* seconds before an open record is closed as aborted */
    size_t history;             /* closed records kept for evidence */
};

/* One decided request, as track_note() needs it. Strings are
 * NUL-terminated and copied (cut at TRACK_FIELD_MAX); NULL = absent. */
struct track_event {
    unsigned long conn_id;
    double now;                 /* wall clock seconds */
    const char *state;          /* protocol_state */
    const char *instance;
    const char *queue_id, *client_address, *client_name, *helo_name, *sasl_username, *sender;
    const char *recipient;
    const char *size;           /* decimal text, as Postfix sends it */
    const char *recipient_count;
    const char *rule;           /* the rule that decided, or NULL */
    const char *verdict;        /* its verdict name, or NULL */
    bool refused;               /* the answer refuses this recipient/message */
    const char *const *rules;   /* other rules that fired (points rules) */
    size_t n_rules;
    const char *const *keys;    /* counter keys of this request */
    const size_t *key_lens;
    size_t n_keys;
    bool wanted;                /* the tracking rule matched this request */
};

typedef void (*track_emit_fn)(void *arg, const struct track_msg *m);

struct track;

struct track *track_new(const struct track_config *cfg, track_emit_fn emit, void *arg);
/* track_free - closes nothing: open records are dropped without emitting. */
void track_free(struct track *t);
/* track_configure - new caps (reload); records over them are closed or dropped. */
void track_configure(struct track *t, const struct track_config *cfg, double now);

/* track_note - join one decided request. Requests of other states than
 * RCPT, DATA, BDAT and END-OF-MESSAGE, or without an instance, are
 * ignored. Returns true if the request was taken. */
bool track_note(struct track *t, const struct track_event *ev);

/* track_expire - close records idle since before now - idle; at most
 * max of them (bounded work per call). Returns how many were closed. */
size_t track_expire(struct track *t, double now, size_t max);

/* track_close_all - close every open record as aborted (they are
 * emitted): at stop, or when tracking is switched off, a transaction
 * that never ended is still a record. Returns how many. */
size_t track_close_all(struct track *t);

/* track_recent - the newest records (open ones first, then the history,
 * newest first) that touched counter key; at most max into out.
 * Returns how many. */
size_t track_recent(struct track *t, const char *key, size_t key_len,
                    const struct track_msg **out, size_t max);

/* track_open_count - records open now (tests, metrics). */
size_t track_open_count(const struct track *t);

/* track_format_json - one record as a JSON object (no newline), with
 * host added when not NULL. */
void track_format_json(const struct track_msg *m, const char *host, struct textbuf *out);

/* track_format_line - one line of alert evidence: time, queue id,
 * sender, recipients, size, status and decisions. */
void track_format_line(const struct track_msg *m, struct textbuf *out);

#endif
