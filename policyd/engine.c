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
 *
 * Before all this, the DNS step: rules_dns_needed() says which questions
 * may still change the answer; each is a small state machine of
 * dnsname.c (dnsq_first/dnsq_next: a PTR then its forward name, an MX
 * then A/AAAA ...) driven here through dns_ask(). Answers land in
 * ev.dns[], which the pure rules read like attributes. One deadline
 * (a dns_job) bounds them all; when it fires, the questions still out
 * are cancelled (their waiters unlinked; c-ares's queries run on and
 * fill the cache) and count as TEMPFAIL.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "followup.h"
#include "log.h"
#include "metrics.h"
#include "record.h"
#include "xalloc.h"

/* One question's progress while it is asked. */
struct engine_dns {
    struct dnscache_waiter w;   /* our place among the question's waiters */
    struct dnsq_step step;      /* which stage, and what it needs next */
    bool out;                   /* a waiter is attached */
};

#define ENGINE_DNS_STAGES 4     /* questions one check asks at most */

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
    free(er->dnsst);
    er->dnsst = NULL;
    request_fini(&er->req);
}

static void engine_done(struct engine_req *er)
{
    const struct action_rule *ar = er->ev.decided;
    er->wait = ar && !er->store_failed ? ar->wait : 0;
    /* Recorded when decided, before any wait: the recording keeps the
     * order and the time the requests were counted in, which replay
     * follows (recorded at the answer, a held request came after those
     * answered meanwhile, and replay counted it late). */
    record_write(&er->req, er->store_now);
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
    struct engine_req *er = arg;
    er->store_now = status == STORE_OK ? now : 0;
    metrics_observe(&metrics_own->store, (double)(engine_now_ns() - er->store_ns) / 1e9);
    if (status != STORE_OK) {
        metrics_own->store_errors++;
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

/* engine_points - count, then decide; dns: the DNS answers are in ev. */
static void engine_points(struct engine_req *er, bool dns)
{
    const struct rules *r = er->cfg->rules;
    /* The store current now: a reload during the DNS step may have
     * replaced (and freed) the one current when the request started. */
    struct store *st = *er->store_ref;
    if (!st) { /* stopping */
        engine_on_error(er);
        return;
    }
    bool stopped = dns ? rules_eval_points_dns(r, &er->req, &er->ev)
                       : rules_eval_points(r, &er->req, &er->ev);
    if (stopped) {
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

/* ---- the DNS step ---- */

static struct log_limiter engine_dns_limiter; /* "DNS failed, deferring" */

static void engine_dns_done(struct engine_req *er)
{
    const struct rules *r = er->cfg->rules;
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        if (!er->ev.dns_need[i] || er->ev.dns[i].status != DNS_TEMPFAIL ||
            !r->dnsqs[i].defer_on_error ||
            !rules_dns_failure_matters(r, &er->req, &er->ev, i))
            continue;
        /* on_error: defer - better a retry later than a wrong verdict. */
        er->dns_failed = true;
        er->ev.decided = NULL;
        snprintf(er->answer, sizeof er->answer, "%s",
                 "DEFER_IF_PERMIT 4.4.3 DNS lookup failed, try again later");
        log_warn_every(&engine_dns_limiter, 60, "dns: %s check%s%s failed: deferring (on_error: defer)",
                       dnsq_kind_name(r->dnsqs[i].kind), r->dnsqs[i].zone ? " of " : "",
                       r->dnsqs[i].zone ? r->dnsqs[i].zone : "");
        engine_done(er);
        return;
    }
    engine_points(er, true);
}

/* engine_dns_final - question i has its answer. */
static void engine_dns_final(struct engine_req *er, size_t i)
{
    const struct dnsq *q = &er->cfg->rules->dnsqs[i];
    if (q->list != DNSLIST_NONE && er->ev.dns[i].status == DNS_FOUND && er->dns)
        dns_zone_hit(er->dns, q->zone);
}

static void engine_on_dns_answer(struct dnscache_waiter *w, const struct dns_rrset *rr);

/* engine_dns_ask - ask query qq for question i, and go on through the
 * stages that the cache answers at once. */
static void engine_dns_ask(struct engine_req *er, size_t i, struct dnsq_query *qq)
{
    const struct dnsq *q = &er->cfg->rules->dnsqs[i];
    struct engine_dns *st = &er->dnsst[i];
    for (int stage = 0; stage < ENGINE_DNS_STAGES; stage++) {
        const struct dns_rrset *rr;
        st->w.cb = engine_on_dns_answer;
        st->w.arg = er;
        st->w.idx = (unsigned)i;
        if (dns_ask(er->dns, &st->w, qq->type, qq->name, &rr) == DNS_ASK_PENDING) {
            st->out = true;
            er->dns_pending++;
            return;
        }
        if (!dnsq_next(q->kind, q->codes, q->n_codes, &st->step, rr, qq, &er->ev.dns[i])) {
            engine_dns_final(er, i);
            return;
        }
    }
    er->ev.dns[i].status = DNS_TEMPFAIL; /* more stages than any check has */
}

static void engine_on_dns_answer(struct dnscache_waiter *w, const struct dns_rrset *rr)
{
    struct engine_req *er = w->arg;
    size_t i = w->idx;
    const struct dnsq *q = &er->cfg->rules->dnsqs[i];
    struct engine_dns *st = &er->dnsst[i];
    struct dnsq_query qq;
    st->out = false;
    er->dns_pending--;
    if (dnsq_next(q->kind, q->codes, q->n_codes, &st->step, rr, &qq, &er->ev.dns[i]))
        engine_dns_ask(er, i, &qq);
    else
        engine_dns_final(er, i);
    if (er->dns_pending == 0) {
        dns_job_stop(er->dns, &er->dns_job);
        engine_dns_done(er);
    }
}

/* engine_on_dns_deadline - the questions still out count as failed. */
static void engine_on_dns_deadline(struct dns_job *job, void *arg)
{
    (void)job;
    struct engine_req *er = arg;
    const struct rules *r = er->cfg->rules;
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        struct engine_dns *st = &er->dnsst[i];
        if (!st->out)
            continue;
        dns_cancel(er->dns, &st->w);
        st->out = false;
        er->ev.dns[i].status = DNS_TEMPFAIL;
        dns_timeout_note(er->dns, r->dnsqs[i].zone ? r->dnsqs[i].zone : dnsq_kind_name(r->dnsqs[i].kind));
    }
    er->dns_pending = 0;
    engine_dns_done(er);
}

static void engine_dns_start(struct engine_req *er)
{
    const struct rules *r = er->cfg->rules;
    if (!er->dnsst)
        er->dnsst = xcalloc(RULES_MAX_DNS, sizeof *er->dnsst);
    er->dns_pending = 0;
    /* Hold one pending count while issuing, so that an answer cannot
     * finish the request before every question is out. */
    er->dns_pending++;
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        if (!er->ev.dns_need[i])
            continue;
        const struct dnsq *q = &r->dnsqs[i];
        struct engine_dns *st = &er->dnsst[i];
        st->out = false;
        size_t len = 0;
        const char *v = request_get(&er->req, q->subject, &len);
        struct dnsq_query qq;
        if (dnsq_first(q->kind, q->zone ? q->zone : "", v, v ? len : 0, &st->step, &qq,
                       &er->ev.dns[i]))
            engine_dns_ask(er, i, &qq);
    }
    if (--er->dns_pending == 0) {
        engine_dns_done(er);
        return;
    }
    dns_job_start(er->dns, &er->dns_job, engine_on_dns_deadline, er);
}

void engine_start(struct engine_req *er, struct config *cfg, struct store *const *store_ref,
                  engine_done_cb cb, void *arg)
{
    er->cfg = config_ref(cfg);
    er->store_ref = store_ref;
    er->cb = cb;
    er->cb_arg = arg;
    er->busy = true;
    er->store_failed = false;
    er->dns_failed = false;
    er->wait = 0;
    er->store_now = 0;
    er->delete_later = false;
    er->started_ns = engine_now_ns();
    /* Lazy: only questions that can still change the answer are asked. */
    if (rules_dns_needed(cfg->rules, &er->req, &er->ev) > 0 && er->dns) {
        engine_dns_start(er);
        return;
    }
    engine_points(er, false);
}

static void engine_ignore_reset(void *arg, int status)
{
    (void)arg;
    (void)status;
}

/* engine_delete - the `delete` side effect: reset the rule's counters
 * for this request's keys. */
size_t engine_delete_keys(const struct engine_req *er, const char **keys, size_t *lens)
{
    const struct action_rule *ar = er->ev.decided;
    if (!ar || !ar->side_delete || er->store_failed)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < ar->n_delete; i++) {
        int u = er->ev.slot[ar->delete_counters[i]];
        if (u < 0)
            continue;
        keys[n] = er->ev.updates[u].key;
        lens[n] = er->ev.updates[u].key_len;
        n++;
    }
    return n;
}

static void engine_delete(struct engine_req *er, struct store *st)
{
    const char *keys[RULES_MAX_COUNTERS];
    size_t lens[RULES_MAX_COUNTERS];
    size_t n = st && !er->delete_later ? engine_delete_keys(er, keys, lens) : 0;
    if (n)
        store_reset(st, keys, lens, n, engine_ignore_reset, NULL);
}

/* engine_count - the decision in metrics_own: by state, rule, verdict. */
static void engine_count(struct engine_req *er, double elapsed_ms)
{
    size_t len;
    const char *state = request_get(&er->req, ATTR_PROTOCOL_STATE, &len);
    metrics_own->requests[metrics_state_of(state, state ? len : 0)]++;
    metrics_observe(&metrics_own->answer, elapsed_ms / 1000);
    const struct eval *ev = &er->ev;
    /* The same verdicts as the decision line's (actions_log). */
    if (er->store_failed)
        metrics_verdict(metrics_own, NULL, "on_error");
    else if (er->dns_failed)
        metrics_verdict(metrics_own, NULL, "dns_defer");
    else if (ev->stopped_by)
        metrics_verdict(metrics_own, ev->stopped_by->name,
                        ev->stopped_by->then == VERDICT_PERMIT ? "permit" : "dunno");
    else if (ev->decided)
        metrics_verdict(metrics_own, ev->decided->name, verdict_name(ev->decided->verdict));
    else
        metrics_verdict(metrics_own, NULL, "dunno");
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
        .dns_failed = er->dns_failed,
        .elapsed_ms = (double)(engine_now_ns() - er->started_ns) / 1e6,
    };
    /* Tracking and alerts first: a message's record goes out just before
     * the decision line of its END-OF-MESSAGE. */
    followup_decision(er->cfg, &d);
    actions_log(&d);
    engine_count(er, d.elapsed_ms);
    engine_delete(er, st);
    request_reset(&er->req);
    config_unref(er->cfg);
    er->cfg = NULL;
    er->busy = false;
}
