/*
 * engine - see engine.h.
 *
 * The request moves PARSED -> (store round trip) -> DECIDED -> ANSWERED:
 *   rules_eval_points  which counters, how many points (pure)
 *   store_apply        one round trip for all of them
 *   rules_decide       first action rule that matches (pure)
 *   actions_format     the answer text
 * A whitelisted request, or one that no counter concerns, is decided
 * without a store round trip.
 */
#include "engine.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "followup.h"
#include "log.h"
#include "metrics.h"
#include "record.h"

static struct log_limiter engine_store_limiter; /* "store unavailable" warnings */

uint64_t engine_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void engine_req_init(struct engine_req *er)
{
    memset(er, 0, sizeof *er);
    request_init(&er->req);
}

void engine_req_fini(struct engine_req *er)
{
    if (er->cfg)
        config_unref(er->cfg);
    er->cfg = NULL;
    request_fini(&er->req);
}

static void engine_done(struct engine_req *er)
{
    const struct action_rule *ar = er->ev.decided;
    er->wait = ar && !er->store_failed ? ar->wait : 0;
    er->cb(er, er->cb_arg);
}

static void engine_decide(struct engine_req *er)
{
    const struct rules *r = er->cfg->rules;
    const struct action_rule *ar = rules_decide(r, &er->req, &er->ev);
    actions_format(r, ar, &er->req, &er->ev, er->answer, sizeof er->answer);
    engine_done(er);
}

static void engine_on_error(struct engine_req *er)
{
    er->store_failed = true;
    er->ev.decided = NULL;
    snprintf(er->answer, sizeof er->answer, "%s", er->cfg->on_error);
    log_warn_every(&engine_store_limiter, 60, "store %s unavailable: answering \"%s\"",
                   er->cfg->store.backend == STORE_BACKEND_REDIS ? er->cfg->store.redis_address
                                                                 : "memory",
                   er->cfg->on_error);
    engine_done(er);
}

static void engine_on_scores(void *arg, int status, const double *scores, size_t n, double now)
{
    (void)now;
    struct engine_req *er = arg;
    metrics_observe(&metrics_main.store, (double)(engine_now_ns() - er->store_ns) / 1e9);
    if (status != STORE_OK) {
        metrics_main.store_errors++;
        engine_on_error(er);
        return;
    }
    rules_set_scores(er->cfg->rules, &er->ev, scores, n);
    engine_decide(er);
}

static void engine_ignore_scores(void *arg, int status, const double *scores, size_t n, double now)
{
    (void)arg;
    (void)status;
    (void)scores;
    (void)n;
    (void)now;
}

void engine_start(struct engine_req *er, struct config *cfg, struct store *st, engine_done_cb cb,
                  void *arg)
{
    er->cfg = config_ref(cfg);
    er->cb = cb;
    er->cb_arg = arg;
    er->busy = true;
    er->store_failed = false;
    er->wait = 0;
    er->started_ns = engine_now_ns();
    const struct rules *r = cfg->rules;
    if (rules_eval_points(r, &er->req, &er->ev)) {
        /* Whitelisted: answer now; what was counted before the `then:`
         * rule is stored without waiting for it. */
        if (er->ev.n_updates)
            store_apply(st, er->ev.updates, er->ev.n_updates, engine_ignore_scores, NULL);
        snprintf(er->answer, sizeof er->answer, "%s",
                 er->ev.stopped_by->then == VERDICT_PERMIT ? "OK" : "DUNNO");
        engine_done(er);
        return;
    }
    if (er->ev.n_updates == 0) {
        /* No counter concerns this request: decide on attributes alone. */
        engine_decide(er);
        return;
    }
    er->store_ns = engine_now_ns();
    store_apply(st, er->ev.updates, er->ev.n_updates, engine_on_scores, er);
}

static void engine_ignore_reset(void *arg, int status)
{
    (void)arg;
    (void)status;
}

/* engine_delete - the `delete` side effect: reset the rule's counters
 * for this request's keys. */
static void engine_delete(struct engine_req *er, struct store *st)
{
    const struct action_rule *ar = er->ev.decided;
    if (!ar || !ar->side_delete || er->store_failed || !st)
        return;
    const char *keys[RULES_MAX_COUNTERS];
    size_t lens[RULES_MAX_COUNTERS];
    size_t n = 0;
    for (size_t i = 0; i < ar->n_delete; i++) {
        int u = er->ev.slot[ar->delete_counters[i]];
        if (u < 0)
            continue;
        keys[n] = er->ev.updates[u].key;
        lens[n] = er->ev.updates[u].key_len;
        n++;
    }
    if (n)
        store_reset(st, keys, lens, n, engine_ignore_reset, NULL);
}

/* engine_count - the decision in metrics_main: by state, rule, verdict. */
static void engine_count(struct engine_req *er, double elapsed_ms)
{
    size_t len;
    const char *state = request_get(&er->req, ATTR_PROTOCOL_STATE, &len);
    metrics_main.requests[metrics_state_of(state, state ? len : 0)]++;
    metrics_observe(&metrics_main.answer, elapsed_ms / 1000);
    const struct eval *ev = &er->ev;
    if (er->store_failed)
        metrics_verdict(&metrics_main, NULL, "on_error");
    else if (ev->stopped_by)
        metrics_verdict(&metrics_main, ev->stopped_by->name,
                        ev->stopped_by->then == VERDICT_PERMIT ? "permit" : "dunno");
    else if (ev->decided)
        metrics_verdict(&metrics_main, ev->decided->name, verdict_name(ev->decided->verdict));
    else
        metrics_verdict(&metrics_main, NULL, "dunno");
}

void engine_finish(struct engine_req *er, struct store *st, unsigned long conn_id,
                   unsigned long req_no)
{
    struct decision d = {
        .conn_id = conn_id,
        .req_no = req_no,
        .rules = er->cfg->rules,
        .req = &er->req,
        .ev = &er->ev,
        .answer = er->answer,
        .store_failed = er->store_failed,
        .elapsed_ms = (double)(engine_now_ns() - er->started_ns) / 1e6,
    };
    /* Tracking and alerts first: a message's record goes out just before
     * the decision line of its END-OF-MESSAGE. */
    followup_decision(er->cfg, &d);
    actions_log(&d);
    engine_count(er, d.elapsed_ms);
    record_write(&er->req);
    engine_delete(er, st);
    request_reset(&er->req);
    config_unref(er->cfg);
    er->cfg = NULL;
    er->busy = false;
}
