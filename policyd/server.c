/*
 * server - see server.h.
 *
 * Reload builds the new config beside the old one (config_load), opens a
 * new store only if the store settings changed, then swaps the pointers.
 * Connections pick up the new config with their next request; a request
 * in flight keeps its reference to the old one until it is answered.
 */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actions.h"
#include "admin.h"
#include "conn.h"
#include "followup.h"
#include "listener.h"
#include "metrics.h"
#include "record.h"

#define SERVER_LIST_CHECK_MS 5000   /* how often list files are checked */
#define SERVER_DRAIN_MS 5000        /* bound on a graceful stop */

bool server_verbose;

int server_apply_log(const struct config *cfg, bool verbose)
{
    log_threshold = verbose ? LOG_LEVEL_DEBUG : cfg->log.level;
    if (log_open(cfg->log.syslog, cfg->log.to_stderr) < 0)
        return -EINVAL;
    int rc = actions_json_open(cfg->log.json);
    if (rc < 0)
        log_error("cannot open JSON decision log %s: %s", cfg->log.json, strerror(-rc));
    return rc;
}

static void server_on_lists(uv_timer_t *t)
{
    struct server *srv = t->data;
    config_refresh_lists(srv->cfg);
}

static void server_on_signal(uv_signal_t *s, int signum)
{
    struct server *srv = s->data;
    switch (signum) {
    case SIGHUP:
        if (!srv->stopping)
            server_reload(srv);
        break;
    case SIGUSR1:
        if (srv->cfg->log.json) {
            int rc = actions_json_open(srv->cfg->log.json);
            if (rc < 0)
                log_error("cannot reopen JSON decision log %s: %s", srv->cfg->log.json,
                          strerror(-rc));
            else
                log_info("JSON decision log %s reopened", srv->cfg->log.json);
        }
        if (srv->cfg->record.file) {
            int rc = record_reopen();
            if (rc < 0)
                log_error("cannot reopen recording %s: %s", srv->cfg->record.file, strerror(-rc));
        }
        break;
    default:
        log_info("signal %d: stopping", signum);
        server_stop(srv);
        break;
    }
}

static void server_signal(struct server *srv, uv_signal_t *h, int signum)
{
    uv_signal_init(srv->loop, h);
    h->data = srv;
    uv_signal_start(h, server_on_signal, signum);
    uv_unref((uv_handle_t *)h); /* signals alone do not keep the loop alive */
}

int server_start(struct server *srv, uv_loop_t *loop, struct config *cfg)
{
    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->cfg = cfg;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    srv->start_time = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    char err[512] = "";
    int rc = store_open(&srv->store, &cfg->store, loop, err, sizeof err);
    if (rc < 0) {
        log_error("cannot open the %s store: %s",
                  cfg->store.backend == STORE_BACKEND_REDIS ? "redis" : "memory", err);
        return rc;
    }
    rc = dns_open(&srv->dns, &cfg->dns, loop, err, sizeof err);
    if (rc < 0) {
        log_error("cannot start the DNS resolver: %s", err);
        server_stop(srv);
        return rc;
    }
    for (size_t i = 0; i < cfg->n_listen; i++) {
        rc = listener_open(srv, cfg->listen[i]);
        if (rc < 0) {
            server_stop(srv);
            return rc;
        }
    }
    /* With workers: N the admin API lives in worker 0 only (one port,
     * one listener); its /metrics are that worker's figures. */
    if (cfg->admin.listen && log_worker <= 0) {
        rc = admin_open(&srv->admin, srv, cfg->admin.listen);
        if (rc < 0) {
            server_stop(srv);
            return rc;
        }
    }
    server_apply_record(cfg);
    server_signal(srv, &srv->sig_hup, SIGHUP);
    server_signal(srv, &srv->sig_term, SIGTERM);
    server_signal(srv, &srv->sig_int, SIGINT);
    server_signal(srv, &srv->sig_usr1, SIGUSR1);
    uv_timer_init(loop, &srv->list_timer);
    srv->list_timer.data = srv;
    uv_timer_start(&srv->list_timer, server_on_lists, SERVER_LIST_CHECK_MS, SERVER_LIST_CHECK_MS);
    uv_unref((uv_handle_t *)&srv->list_timer);
    uv_timer_init(loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    followup_start(loop, cfg);
    return 0;
}

void server_apply_record(const struct config *cfg)
{
    int rc = record_open(&cfg->record);
    if (rc < 0)
        log_error("cannot open recording %s: %s", cfg->record.file, strerror(-rc));
    else if (cfg->record.file)
        log_info("recording requests to %s", cfg->record.file);
}

static bool server_same_admin(const struct config *a, const struct config *b)
{
    if (!a->admin.listen || !b->admin.listen)
        return a->admin.listen == b->admin.listen;
    return strcmp(a->admin.listen, b->admin.listen) == 0;
}

static bool server_same_listen(const struct config *a, const struct config *b)
{
    if (a->n_listen != b->n_listen)
        return false;
    for (size_t i = 0; i < a->n_listen; i++)
        if (strcmp(a->listen[i], b->listen[i]) != 0)
            return false;
    return true;
}

int server_reload(struct server *srv)
{
    struct config_errors errs = {0};
    struct config *old = srv->cfg;
    struct config *cfg = config_load(old->path, &errs);
    if (!cfg) {
        log_error("reload failed, keeping generation %u: %zu error%s in %s", old->generation,
                  errs.n, errs.n == 1 ? "" : "s", old->path);
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msgs[i]);
        config_errors_fini(&errs);
        metrics_own->reload_failures++;
        return -EINVAL;
    }
    if (cfg->workers != old->workers) {
        /* The new config was validated for its own worker count: a memory
         * store is fine with workers: 1, not in one of two workers. */
        log_error("reload refused, keeping generation %u: workers: changed from %u to %u, "
                  "which needs a restart", old->generation, old->workers, cfg->workers);
        config_unref(cfg);
        metrics_own->reload_failures++;
        return -EINVAL;
    }
    cfg->generation = old->generation + 1;
    if (!store_config_equal(&old->store, &cfg->store)) {
        struct store *st = NULL;
        char err[512] = "";
        if (store_open(&st, &cfg->store, srv->loop, err, sizeof err) < 0) {
            log_error("reload failed, keeping generation %u: cannot open the new store: %s",
                      old->generation, err);
            config_unref(cfg);
            metrics_own->reload_failures++;
            return -EINVAL;
        }
        /* Requests waiting on the old store get TEMPFAIL (on_error). The
         * keys the old memory store evicted stay counted. */
        if (old->store.backend == STORE_BACKEND_MEMORY) {
            size_t keys;
            unsigned long long evicted;
            store_memory_stats(srv->store, &keys, &evicted);
            srv->evictions_before += evicted;
        }
        store_close(srv->store);
        srv->store = st;
        log_info("store changed to %s", store_name(st));
    }
    if (!dns_config_equal(&old->dns, &cfg->dns)) {
        struct dns *d = NULL;
        char err[512] = "";
        if (dns_open(&d, &cfg->dns, srv->loop, err, sizeof err) < 0) {
            /* The store may have changed already: keep the old resolver
             * rather than fail half a reload. */
            log_error("reload: cannot start the new DNS resolver, keeping the old one: %s", err);
        } else {
            /* Requests waiting on the old one keep it until they have
             * their answers (they finish on what they started with);
             * what it counts from now on is not carried over. */
            dns_stats_carry(d, srv->dns);
            dns_retire(srv->dns);
            srv->dns = d;
            log_info("dns resolver settings changed");
        }
    }
    if (!server_same_listen(old, cfg))
        log_warn("listen: changes take effect after a restart; still listening on the old addresses");
    if (!server_same_admin(old, cfg))
        log_warn("admin.listen: changes take effect after a restart");
    bool record_changed = !old->record.file != !cfg->record.file ||
                          (cfg->record.file && (strcmp(old->record.file, cfg->record.file) != 0 ||
                                                old->record.redact != cfg->record.redact ||
                                                old->record.max_size != cfg->record.max_size ||
                                                old->record.keep != cfg->record.keep));
    srv->cfg = cfg;
    server_apply_log(cfg, server_verbose);
    if (record_changed)
        server_apply_record(cfg);
    metrics_own->reloads++;
    config_unref(old);
    log_info("config reloaded generation=%u counters=%zu lists=%zu points=%zu actions=%zu",
             cfg->generation, cfg->rules->n_counters, cfg->rules->n_lists, cfg->rules->n_points,
             cfg->rules->n_actions);
    followup_reload(cfg);
    return 0;
}

static void server_close_handles(struct server *srv)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&srv->sig_hup,    (uv_handle_t *)&srv->sig_term,
                         (uv_handle_t *)&srv->sig_int,    (uv_handle_t *)&srv->sig_usr1,
                         (uv_handle_t *)&srv->list_timer, (uv_handle_t *)&srv->drain_timer};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (hs[i]->loop && !uv_is_closing(hs[i]))
            uv_close(hs[i], NULL);
    /* DNS first: requests it still holds go on to the store (those of a
     * resolver a reload replaced too). */
    dns_close_retired();
    if (srv->dns) {
        dns_close(srv->dns);
        srv->dns = NULL;
    }
    if (srv->admin) {
        admin_close(srv->admin);
        srv->admin = NULL;
    }
    record_close();
    if (srv->store) {
        store_close(srv->store);
        srv->store = NULL;
    }
    followup_stop();
}

static void server_on_drain(uv_timer_t *t);

void server_conn_closed(struct server *srv)
{
    /* The last connection of a graceful stop: nothing left to wait for.
     * The handles are closed from the loop, not from here: this runs
     * inside whatever callback let the last connection go, a DNS answer
     * say, and closing the resolver from inside c-ares's own callback
     * freed the query it was still answering. */
    if (srv->stopping && srv->n_conns == 0 && srv->store) {
        if (!srv->drain_timer.loop) {
            server_close_handles(srv);
            return;
        }
        uv_ref((uv_handle_t *)&srv->drain_timer);
        uv_timer_start(&srv->drain_timer, server_on_drain, 0, 0);
    }
}

static void server_on_drain(uv_timer_t *t)
{
    struct server *srv = t->data;
    if (srv->conns)
        log_warn("stop: closing %u connections with requests still in flight", srv->n_conns);
    for (struct conn *c = srv->conns; c; c = c->next)
        conn_close(c);
    server_close_handles(srv);
}

void server_stop(struct server *srv)
{
    if (srv->stopping)
        return;
    srv->stopping = true;
    listener_close_all(srv);
    bool busy = false;
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        busy |= c->busy;
        conn_shutdown(c);
    }
    if (busy && srv->drain_timer.loop) {
        /* Let answers in flight finish, within a bound. */
        uv_timer_start(&srv->drain_timer, server_on_drain, SERVER_DRAIN_MS, 0);
        uv_unref((uv_handle_t *)&srv->drain_timer);
        return;
    }
    server_close_handles(srv);
}
