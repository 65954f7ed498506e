/*
 * config - the YAML configuration, loaded into one validated, immutable,
 * reference-counted struct config.
 *
 * config_load() reads the main file and its includes with libyaml's
 * document API (so every node keeps its line and column), checks every
 * setting and every rule, and collects every problem as
 * "file:line:col: path: problem" before giving up: an operator fixes all
 * mistakes in one go. Unknown keys are errors (they are typos). Any error
 * discards the whole new config; a reload that fails keeps the old one.
 *
 * Include order: the main file's own rules come first, then each include
 * pattern in the order written, files of one pattern in sorted order.
 * Counters and lists may be defined in any file and used in any other.
 *
 * A request holds a reference (config_ref) for as long as it is being
 * answered, so a reload never pulls rules from under a request in flight.
 * Pure apart from reading the files (config, includes, list files,
 * password file).
 */
#ifndef SMTPGUARD_CONFIG_H
#define SMTPGUARD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "cidr.h"
#include "dns.h"
#include "log.h"
#include "protocol.h"
#include "record.h"
#include "rules.h"
#include "store.h"

#define CONFIG_MAX_LISTEN 16
#define CONFIG_MAX_WORKERS 64    /* workers: at most (one per core is the idea) */
#define CONFIG_DEFAULT_PORT_HINT "127.0.0.1:10040"

struct config_limits {
    struct protocol_limits protocol;  /* line, request, attribute caps */
    double idle_timeout;              /* seconds a connection may stay silent */
    unsigned max_connections;         /* connections open at once */
};

struct config_log {
    char *syslog;               /* facility name, or NULL for no syslog */
    bool to_stderr;             /* also write to stderr */
    enum log_level level;
    char *json;                 /* JSON-lines decision log path, or NULL */
    char *stream_key;           /* Redis stream of events (XADD), or NULL */
    unsigned long stream_maxlen; /* entries kept, approximately (MAXLEN ~) */
    bool stream_decisions;      /* decisions go to the stream too, not only messages */
};

/* alerts: the abuse desk's mail (see alert.h). */
struct config_alerts {
    bool enabled;               /* an alerts: section is present */
    char *smtp;                 /* relay "IP:port", or NULL */
    char *sendmail;             /* sendmail program, or NULL */
    char *from;                 /* envelope and header sender */
    char **to;                  /* abuse desk addresses */
    size_t n_to;
    char *helo;                 /* EHLO name; NULL = this host's name */
    double every;               /* seconds: one alert per (rule, key) per interval */
    bool digest;                /* one mail per interval listing every alert */
    char *subject;              /* template (alertmsg) */
    char *body;                 /* template (alertmsg) */
    double timeout;             /* seconds per SMTP step, or per sendmail run */
    unsigned retries;           /* more tries of a mail that failed for now */
    double retry_delay;         /* seconds before the first retry; doubles */
    unsigned queue;             /* mails waiting at most */
    unsigned evidence;          /* messages listed in a mail */
};

/* tracking: one record per message (see track.h). */
struct config_tracking {
    bool enabled;               /* records are kept (tracking: or alerts: present) */
    bool emit;                  /* records go to the event log (tracking: present) */
    struct cond *when;          /* which messages are recorded; NULL = all */
    unsigned max_open;          /* transactions followed at once */
    double idle;                /* seconds before an unfinished one is closed */
    unsigned history;           /* closed records kept in memory for evidence */
};

struct config_admin {
    char *listen;               /* "127.0.0.1:PORT", "[::1]:PORT", "unix:/path"; NULL = off */
    char *token;                /* from token_file or $SMTPGUARD_ADMIN_TOKEN; NULL = none; never logged */
};

struct config {
    unsigned refs;              /* holders: the server and requests in flight */
    unsigned generation;        /* 1 for the first load, +1 per reload */
    char *path;                 /* main file as given */
    unsigned workers;           /* worker processes (workers:); 1 = no fork */
    char *listen[CONFIG_MAX_LISTEN];
    size_t n_listen;
    struct cidr_set *clients;   /* allowed TCP peers */
    struct config_limits limits;
    struct store_config store;
    struct config_alerts alerts;
    struct config_tracking tracking;
    struct dns_config dns;      /* resolver settings (dns:) */
    char *on_error;             /* Postfix action text when the store fails */
    struct config_log log;
    struct config_admin admin;  /* HTTP admin API and /metrics */
    struct record_settings record; /* request recording */
    struct rules *rules;
};

/* Collected diagnostics. */
struct config_errors {
    char **msgs;
    size_t n;
};

void config_errors_fini(struct config_errors *errs);

/*
 * config_load - load and validate path. Returns the config (refs = 1),
 * or NULL with every problem in errs. Warnings (e.g. host bits set in a
 * CIDR) are logged with log_warn and do not fail the load.
 */
struct config *config_load(const char *path, struct config_errors *errs);

/* config_load_string - the same from memory (tests, fuzzing); name is
 * used in diagnostics, includes are resolved relative to the current
 * directory. */
struct config *config_load_string(const char *name, const char *text, size_t len,
                                  struct config_errors *errs);

/* config_allow_files - false makes includes, list files and password
 * files errors (the config fuzzer must not read the machine's files). */
extern bool config_allow_files;

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);

/* config_refresh_lists - reload file lists whose file changed; problems
 * are logged, old contents kept. Returns the number reloaded. */
int config_refresh_lists(struct config *cfg);

#endif
