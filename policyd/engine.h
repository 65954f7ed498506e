/*
 * engine - deciding one request: the points rules, one store round trip,
 * the action rules, the answer text; and once the answer is out, the
 * decision record and the side effects (delete; tracking, event stream
 * and alert mail through followup.h).
 *
 * The daemon's connections drive requests through it, and so can an
 * offline tool (a dry run, a replay) with a memory store and its own
 * clock: the engine does no socket I/O.
 *
 * DNS: before the points, the engine asks the DNS questions that rules
 * can still need (rules_dns_needed), all at once, through er->dns (set
 * by the caller; NULL means no resolver: every check counts as not
 * asked). Cached answers come back at once; the others within the
 * resolver's deadline, after which a missing answer is TEMPFAIL ("not
 * listed", or a temporary-failure answer for checks with on_error: defer).
 *
 * Lifetime: the caller owns the struct engine_req (a connection embeds
 * one and reuses it), fills er->req, and calls engine_start(). The done
 * callback runs exactly once, either before engine_start() returns (no
 * counter concerns the request, it was whitelisted, or its DNS answers
 * were cached) or later from the store's or the resolver's callback; the
 * caller must keep er alive until then. After the
 * answer has been delivered the caller calls engine_finish(), which logs,
 * starts the side effects and drops the config reference; then er may be
 * reused. engine_finish also counts the decision in metrics_own and
 * appends the request to the recording, if one is open (record.h).
 */
#ifndef SMTPGUARD_ENGINE_H
#define SMTPGUARD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "actions.h"
#include "config.h"
#include "dns.h"
#include "request.h"
#include "rules.h"
#include "store.h"

struct engine_req;
struct engine_dns;

typedef void (*engine_done_cb)(struct engine_req *er, void *arg);

struct engine_req {
    struct request req;         /* the request; the caller fills it */
    struct eval ev;             /* rule evaluation state */
    struct config *cfg;         /* reference held from start to finish */
    struct store *const *store_ref; /* where the current store is (see engine_start) */
    bool store_failed;          /* answered with on_error */
    bool busy;                  /* between start and finish */
    uint64_t started_ns;        /* monotonic, for elapsed_ms */
    uint64_t store_ns;          /* monotonic, when the store round trip began (metrics) */
    double store_now;           /* the store's clock at this request's update, 0 if none */
    bool delete_later;          /* engine_finish leaves the delete to the caller (replay) */
    char answer[ACTIONS_MAX_ANSWER]; /* the Postfix action text */
    double wait;                /* seconds the answer is to be held back */
    engine_done_cb cb;
    void *cb_arg;
    struct dns *dns;            /* resolver for DNS checks (the caller's); NULL = none */
    struct engine_dns *dnsst;   /* per-question progress, allocated on first use */
    struct dns_job dns_job;     /* deadline of this request's questions */
    unsigned dns_pending;       /* questions still out */
    bool dns_failed;            /* answered a temporary failure (on_error: defer) */
};

void engine_req_init(struct engine_req *er);
void engine_req_fini(struct engine_req *er);

/* engine_start - decide er->req with cfg's rules. *store_ref is where the
 * current store is found when the counters are sent (after the DNS step,
 * a reload may have replaced it); NULL there answers on_error. */
void engine_start(struct engine_req *er, struct config *cfg, struct store *const *store_ref,
                  engine_done_cb cb, void *arg);

/* engine_delete_keys - the keys the decision's `delete` resets (into
 * keys/lens, RULES_MAX_COUNTERS at most); 0 when there is none. */
size_t engine_delete_keys(const struct engine_req *er, const char **keys, size_t *lens);

/* engine_finish - after the answer went out: record the decision
 * (conn_id and req_no name it in logs), start side effects on st (the
 * store current now: a reload may have replaced the one the request
 * started with; NULL skips them), release the config, reset the request. */
void engine_finish(struct engine_req *er, struct store *st, unsigned long conn_id,
                   unsigned long req_no);

/* engine_now_ns - the monotonic clock the engine times requests with. */
uint64_t engine_now_ns(void);

#endif
