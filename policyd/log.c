/*
 * log - see log.h. stderr lines carry a timestamp and level; syslog lines
 * carry the level as a priority and ident "smtpguard".
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>

enum log_level log_threshold = LOG_LEVEL_INFO;
int log_worker = -1;

static bool log_to_stderr = true;
static bool log_to_syslog;

static const struct {
    const char *name;
    int facility;
} log_facilities[] = {
    {"mail", LOG_MAIL},     {"daemon", LOG_DAEMON}, {"user", LOG_USER},
    {"local0", LOG_LOCAL0}, {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2},
    {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4}, {"local5", LOG_LOCAL5},
    {"local6", LOG_LOCAL6}, {"local7", LOG_LOCAL7},
};

static int log_facility_code(const char *name)
{
    for (size_t i = 0; i < sizeof log_facilities / sizeof log_facilities[0]; i++)
        if (strcasecmp(name, log_facilities[i].name) == 0)
            return log_facilities[i].facility;
    return -1;
}

bool log_facility_valid(const char *facility)
{
    return log_facility_code(facility) >= 0;
}

int log_level_parse(const char *s, enum log_level *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -EINVAL;
}

int log_open(const char *facility, bool to_stderr)
{
    if (log_to_syslog) {
        closelog();
        log_to_syslog = false;
    }
    log_to_stderr = to_stderr;
    if (facility) {
        int code = log_facility_code(facility);
        if (code < 0)
            return -EINVAL;
        openlog("smtpguard", LOG_PID | LOG_NDELAY, code);
        log_to_syslog = true;
    }
    return 0;
}

void log_close(void)
{
    if (log_to_syslog)
        closelog();
    log_to_syslog = false;
}

static const char *log_level_name(enum log_level level)
{
    switch (level) {
    case LOG_LEVEL_ERROR:
        return "error";
    case LOG_LEVEL_WARN:
        return "warning";
    case LOG_LEVEL_INFO:
        return "info";
    case LOG_LEVEL_DEBUG:
        return "debug";
    }
    return "?";
}

static int log_priority(enum log_level level)
{
    switch (level) {
    case LOG_LEVEL_ERROR:
        return LOG_ERR;
    case LOG_LEVEL_WARN:
        return LOG_WARNING;
    case LOG_LEVEL_INFO:
        return LOG_INFO;
    case LOG_LEVEL_DEBUG:
        return LOG_DEBUG;
    }
    return LOG_INFO;
}

__attribute__((format(printf, 2, 0))) static void log_vwrite(enum log_level level, const char *fmt,
                                                         va_list ap)
{
    /* A decision line is built in up to 3 kB (actions.c): room for it,
     * and a line cut anyway says so. */
    char line[4096];
    size_t off = 0;
    if (log_worker >= 0)
        off = (size_t)snprintf(line, sizeof line, "w=%d ", log_worker);
    int n = vsnprintf(line + off, sizeof line - off, fmt, ap);
    if (n >= 0 && (size_t)n >= sizeof line - off)
        memcpy(line + sizeof line - 5, "...", 4); /* the cut is marked */
    if (log_to_stderr) {
        struct timespec ts;
        struct tm tm;
        char stamp[32];
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        fprintf(stderr, "%s.%03ldZ smtpguard[%s]: %s\n", stamp, ts.tv_nsec / 1000000,
                log_level_name(level), line);
    }
    if (log_to_syslog)
        syslog(log_priority(level), "%s: %s", log_level_name(level), line);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    if (level > log_threshold)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, fmt, ap);
    va_end(ap);
}

void log_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(LOG_LEVEL_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}

void log_panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(LOG_LEVEL_ERROR, fmt, ap);
    va_end(ap);
    abort();
}

uint64_t log_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void log_warn_every(struct log_limiter *lim, unsigned interval_s, const char *fmt, ...)
{
    uint64_t now = log_now_ms();
    if (lim->last_ms && now - lim->last_ms < (uint64_t)interval_s * 1000u) {
        lim->suppressed++;
        return;
    }
    char line[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (lim->suppressed)
        log_write(LOG_LEVEL_WARN, "%s (%lu similar suppressed since the last one)", line,
                  lim->suppressed);
    else
        log_write(LOG_LEVEL_WARN, "%s", line);
    lim->last_ms = now;
    lim->suppressed = 0;
}

static const char *log_quote_as(const char *s, size_t len, char *buf, size_t cap, bool field);

const char *log_quote(const char *s, size_t len, char *buf, size_t cap)
{
    return log_quote_as(s, len, buf, cap, false);
}

const char *log_quote_field(const char *s, size_t len, char *buf, size_t cap)
{
    return log_quote_as(s, len, buf, cap, true);
}

static const char *log_quote_as(const char *s, size_t len, char *buf, size_t cap, bool field)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap < 8)
        return "-";
    if (!s) {
        memcpy(buf, "-", 2);
        return buf;
    }
    bool cut = len > LOG_QUOTE_MAX;
    if (cut)
        len = LOG_QUOTE_MAX;
    for (size_t i = 0; i < len && o + 5 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch > 0x20 && ch < 0x7f &&
                   !(field && (ch == '<' || ch == '>'))) {
            buf[o++] = (char)ch;
        } else if (ch == ' ' && !field) {
            buf[o++] = (char)ch;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[ch >> 4];
            buf[o++] = hex[ch & 15];
        }
    }
    if (cut && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}
