/*
 * log - diagnostics to stderr and/or syslog, one event per line.
 *
 * Lines look like Postfix's: "c=1a r=3 verdict=reject rule=flood
 * client=192.0.2.7". Values that came from a peer go through log_quote()
 * (escaped, cut at LOG_QUOTE_MAX bytes) so a client cannot forge lines or
 * flood the log. A repeating failure goes through log_warn_every(), which
 * prints at most once per interval and says how many it suppressed.
 * The macros test the level before evaluating their arguments.
 * log_fatal is for start-up only; nothing a peer does may reach it.
 */
#ifndef SMTPGUARD_LOG_H
#define SMTPGUARD_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_ERROR,
    LOG_LEVEL_WARN,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG
};

extern enum log_level log_threshold;
/* log_worker - this process's worker number (workers: N), written as
 * "w=N " at the start of every line; -1 (no workers) writes nothing. */
extern int log_worker;

/* log_open - where to write. facility is a syslog facility name ("mail",
 * "local0" ...) or NULL for no syslog; to_stderr adds stderr. Returns 0
 * or -EINVAL for an unknown facility. */
int log_open(const char *facility, bool to_stderr);
void log_close(void);
/* log_facility_valid - for config validation. */
bool log_facility_valid(const char *facility);
int log_level_parse(const char *s, enum log_level *out);

void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)                                                                              \
    do {                                                                                           \
        if (log_threshold >= LOG_LEVEL_WARN)                                                       \
            log_write(LOG_LEVEL_WARN, __VA_ARGS__);                                                \
    } while (0)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_threshold >= LOG_LEVEL_INFO)                                                       \
            log_write(LOG_LEVEL_INFO, __VA_ARGS__);                                                \
    } while (0)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_threshold >= LOG_LEVEL_DEBUG)                                                      \
            log_write(LOG_LEVEL_DEBUG, __VA_ARGS__);                                               \
    } while (0)

/* log_fatal - print and exit(1); start-up errors only. */
void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* log_panic - a broken invariant: print and abort() for a core dump. */
void log_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* A limiter for repeating warnings. Zero-initialise. */
struct log_limiter {
    uint64_t last_ms;           /* monotonic ms of the last line printed */
    unsigned long suppressed;   /* lines swallowed since */
};

/* log_warn_every - print at most once per interval_s seconds; the next
 * printed line says "(N similar suppressed)". */
void log_warn_every(struct log_limiter *lim, unsigned interval_s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_QUOTE_MAX 100

/* log_quote - escape s for a log line into buf (cap >= 4*LOG_QUOTE_MAX+8
 * is always enough): printable ASCII and spaces kept, '"' and '\\' escaped,
 * other bytes as \xNN, cut at LOG_QUOTE_MAX input bytes with "...".
 * Returns buf. NULL prints as "-". */
const char *log_quote(const char *s, size_t len, char *buf, size_t cap);
/* log_quote_field - the same, for a field's value in a key=value line:
 * spaces, '<' and '>' escaped too (as \xNN), so that a peer's value stays
 * one token and cannot close its <...> or start a field of its own
 * ("pc1> rule=trusted verdict=permit" in a HELO). */
const char *log_quote_field(const char *s, size_t len, char *buf, size_t cap);
#define LOG_QUOTE_BUF (4 * LOG_QUOTE_MAX + 8)

/* log_now_ms - monotonic milliseconds (for limiters). */
uint64_t log_now_ms(void);

#endif
