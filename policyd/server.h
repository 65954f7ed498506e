/*
 * server - the running daemon: the current config, the counter store,
 * the listeners and the open connections, and what signals do to them.
 *
 *   SIGHUP   reload config, rules and lists; a broken config is refused
 *            with every error logged, and the old one keeps serving.
 *            Requests in flight finish on the rules they started with.
 *   SIGTERM  stop accepting, let requests in flight finish (bounded:
 *   SIGINT   held answers go out at once), close everything; the loop
 *            then ends.
 *   SIGUSR1  reopen the JSON decision log and the recording (logrotate).
 * The admin API (admin.h), if configured, starts and stops with the
 * listeners; the recording (record.h) follows the config's record:.
 * File lists are checked for changes every few seconds.
 */
#ifndef SMTPGUARD_SERVER_H
#define SMTPGUARD_SERVER_H

#include <stdbool.h>
#include <uv.h>

#include "config.h"
#include "dns.h"
#include "log.h"
#include "store.h"

struct admin;
struct conn;
struct listener;

struct server {
    uv_loop_t *loop;
    struct config *cfg;         /* current; requests hold their own reference */
    struct store *store;        /* current counter store */
    struct dns *dns;            /* current resolver for DNS checks */
    struct listener *listeners; /* linked list */
    struct conn *conns;         /* doubly linked list of open connections */
    unsigned n_conns;           /* connections open now */
    unsigned long next_conn_id; /* numbers connections for log lines */
    unsigned long requests;     /* answered since start */
    uv_signal_t sig_hup, sig_term, sig_int, sig_usr1;
    uv_timer_t list_timer;      /* file list change checks */
    uv_timer_t drain_timer;     /* bound on graceful shutdown */
    bool stopping;
    struct admin *admin;        /* HTTP admin API, or NULL when not configured */
    double start_time;          /* seconds since the epoch, for uptime and metrics */
    unsigned long long evictions_before; /* by memory stores a reload replaced */
    struct log_limiter store_limiter;  /* "store failed" warnings */
    struct log_limiter refuse_limiter; /* refused clients */
    struct log_limiter limit_limiter;  /* connection cap */
    struct log_limiter proto_limiter;  /* protocol errors */
};

/* server_start - open the store, bind every listener, install signal
 * handlers. Takes over cfg's reference. Returns 0 or a negative errno
 * (everything logged). */
int server_start(struct server *srv, uv_loop_t *loop, struct config *cfg);

/* server_reload - what SIGHUP does. Returns 0 if the new config is live. */
int server_reload(struct server *srv);

/* server_stop - what SIGTERM does. */
void server_stop(struct server *srv);

/* server_conn_closed - a connection is gone (conn.c calls it). */
void server_conn_closed(struct server *srv);

/* server_apply_log - apply a config's log settings. */
int server_apply_log(const struct config *cfg, bool verbose);

/* server_apply_record - start, restart or stop the recording. */
void server_apply_record(const struct config *cfg);

extern bool server_verbose;     /* -v: debug logging whatever the config says */

#endif
