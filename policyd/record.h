/*
 * record - recordings of the requests the daemon receives, for replay.
 *
 * A recording is JSON lines, one request each:
 *
 *   {"t":1700000000.123,"a":{"request":"smtpd_access_policy","protocol_state":"RCPT",...}}
 *
 * t is the time the request was answered (seconds since the epoch, to the
 * millisecond); a holds the attributes Postfix sent, absent ones left out
 * and empty ones kept (the null sender is "sender":""). Control characters
 * are written \u00XX; other bytes as they came.
 *
 * Redaction happens on the way out, so what is on disk is what the
 * operator chose to keep:
 *   RECORD_REDACT_LOCALPART  the local part of sender, recipient,
 *                            sasl_sender and sasl_username becomes "*"
 *                            (domains kept; counters keyed on addresses
 *                            merge per domain in a replay);
 *   RECORD_REDACT_HASH       that local part becomes "h" + 16 hex digits
 *                            of a SHA-1 over it (lower-cased): keys stay
 *                            distinct in a replay, names unreadable.
 * XXX: the hash is not keyed, so a guessable address can be confirmed by
 * hashing guesses; it keeps casual readers out, not a determined one.
 *
 * The writer (record_open/record_write) is process-wide like the JSON
 * decision log: buffered stdio, one flush per request, synchronous on the
 * loop (a line is a few hundred bytes). Past max_size the file is rotated
 * (FILE -> FILE.1 -> ... -> FILE.keep) and a new one started. A write
 * error is logged once a minute and the recording goes on.
 *
 * record_format and record_parse are pure (unit tested); record_parse
 * works in place and leaves the request's values pointing into the line.
 */
#ifndef SMTPGUARD_RECORD_H
#define SMTPGUARD_RECORD_H

#include <stdbool.h>
#include <stddef.h>

#include "request.h"

enum record_redact {
    RECORD_REDACT_NONE,
    RECORD_REDACT_LOCALPART,
    RECORD_REDACT_HASH
};

struct record_settings {
    char *file;                 /* NULL = not recording */
    enum record_redact redact;
    unsigned long long max_size; /* bytes per file before rotation; 0 = no cap */
    unsigned keep;              /* rotated files kept */
};

#define RECORD_MAX_LINE (8 * 65536) /* bytes of one formatted request, at most */

/* record_redact_parse - "none", "localpart", "hash". Returns 0 or -EINVAL. */
int record_redact_parse(const char *s, enum record_redact *out);

/* record_format - one line (with its '\n') for req at time t into out.
 * Returns the length, or 0 if it does not fit in cap. */
size_t record_format(struct request *req, double t, enum record_redact redact, char *out,
                     size_t cap);

/* record_parse - one line (without its '\n') into req (reset first) and
 * *t. Works in place: line is modified and req's values point into it.
 * Returns 0, or -EINVAL with *why. */
int record_parse(char *line, size_t len, double *t, struct request *req, const char **why);

/* record_open - start (or restart, with new settings) recording; NULL or
 * a NULL file stops it. Returns 0 or a negative errno. */
int record_open(const struct record_settings *s);
/* record_reopen - reopen the file (SIGUSR1, after an outside rotation). */
int record_reopen(void);
/* record_write - append req, decided now (an answer held by `wait` goes
 * out later); no-op when not recording. */
void record_write(struct request *req, double t);
/* record_active - whether a file is being written. */
bool record_active(void);
void record_close(void);

#endif
