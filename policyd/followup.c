/*
 * followup - see followup.h.
 *
 * Order inside followup_decision(): the request is joined to its message
 * first, so that an alert tripped by this very request lists the
 * message in its evidence; then the alert. A closed message record is
 * formatted once as JSON and written to the JSON log and the stream.
 * Stream entries are XADD KEY MAXLEN ~ N * type T host H json J: the
 * approximate cap lets Redis trim whole nodes, which is cheap.
 */
#include "followup.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "alert.h"
#include "log.h"
#include "redisaux.h"
#include "textbuf.h"
#include "track.h"
#include "xalloc.h"

#define FOLLOWUP_SWEEP_MS 1000        /* idle transactions are looked for this often */
#define FOLLOWUP_SWEEP_MAX 1000       /* closed per sweep at most */
#define FOLLOWUP_MAX_EVIDENCE 1000
#define FOLLOWUP_LOG_EVERY 60

static struct {
    uv_loop_t *loop;
    bool started;
    struct track *track;        /* NULL: no tracking */
    bool emit;                  /* records go to the sinks */
    struct redisaux *aux;       /* NULL: no stream and no shared de-dup */
    struct store_config aux_cfg; /* what aux was opened with */
    struct alert *alert;        /* NULL: no alerts */
    unsigned evidence;          /* messages listed in an alert */
    char *stream_key;           /* NULL: no stream */
    char maxlen[24];            /* MAXLEN argument */
    bool stream_decisions;
    uv_timer_t sweep;           /* track_expire */
    char hostname[256];
    unsigned long stream_dropped;
    struct log_limiter lim_stream;
} fu;

static double followup_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* followup_stream_dropped - one event lost; why, in a rate-limited line. */
static void followup_stream_dropped(const char *why)
{
    fu.stream_dropped++;
    log_warn_every(&fu.lim_stream, FOLLOWUP_LOG_EVERY, "event stream %s: %s, %lu events dropped so far",
                   fu.stream_key ? fu.stream_key : "-", why, fu.stream_dropped);
}

/* followup_on_xadd - Redis's answer to one XADD: an error (the key holds
 * something else, say) or none (timeout, connection lost) loses the
 * event, and is counted like the events refused before they were sent
 * (they were dropped without a word). */
static void followup_on_xadd(void *arg, const struct redisReply *reply)
{
    (void)arg;
    if (!reply) {
        followup_stream_dropped("no answer from Redis");
    } else if (reply->type == REDIS_REPLY_ERROR) {
        char q[LOG_QUOTE_BUF], why[LOG_QUOTE_BUF + 16];
        snprintf(why, sizeof why, "Redis said %s", log_quote(reply->str, reply->len, q, sizeof q));
        followup_stream_dropped(why);
    }
}

static void followup_stream(const char *type, const char *json, size_t len)
{
    if (!fu.aux || !fu.stream_key)
        return;
    const char *argv[] = {"XADD", fu.stream_key, "MAXLEN", "~", fu.maxlen, "*",
                          "type", type, "host", fu.hostname, "json", json};
    size_t lens[12];
    for (size_t i = 0; i < 12; i++)
        lens[i] = strlen(argv[i]);
    lens[11] = len;
    int rc = redisaux_command(fu.aux, 12, argv, lens, followup_on_xadd, NULL);
    if (rc < 0)
        followup_stream_dropped(rc == -ENOTCONN ? "Redis not connected"
                                                : "too many writes in flight");
}

/* A decision's JSON record, from actions.c. */
static void followup_on_decision_json(void *arg, const struct decision *d, const char *json,
                                    size_t len)
{
    (void)arg;
    (void)d;
    if (fu.stream_decisions)
        followup_stream("decision", json, len);
}

/* A closed message record, from track.c. */
static void followup_on_message(void *arg, const struct track_msg *m)
{
    (void)arg;
    if (!fu.emit)
        return;
    struct textbuf b;
    textbuf_init(&b, 256 * 1024);
    track_format_json(m, fu.hostname, &b);
    followup_stream("message", textbuf_cstr(&b), b.len);
    textbuf_add(&b, "\n", 1);
    actions_json_write(textbuf_cstr(&b), b.len);
    textbuf_fini(&b);
}

static void followup_on_sweep(uv_timer_t *t)
{
    (void)t;
    if (fu.track)
        track_expire(fu.track, followup_now(), FOLLOWUP_SWEEP_MAX);
}

static bool followup_needs_aux(const struct config *cfg)
{
    return cfg->log.stream_key ||
           (cfg->alerts.enabled && cfg->store.backend == STORE_BACKEND_REDIS);
}

static void followup_apply(const struct config *cfg)
{
    double now = followup_now();
    /* Tracking. */
    struct track_config tc = {
        .max_open = cfg->tracking.max_open,
        .idle = cfg->tracking.idle,
        .history = cfg->tracking.history,
    };
    if (cfg->tracking.enabled && !fu.track)
        fu.track = track_new(&tc, followup_on_message, NULL);
    else if (cfg->tracking.enabled)
        track_configure(fu.track, &tc, now);
    else if (fu.track) {
        track_close_all(fu.track);
        track_free(fu.track);
        fu.track = NULL;
    }
    fu.emit = cfg->tracking.emit;

    /* The side connection to Redis. */
    struct redisaux *old_aux = NULL;
    if (followup_needs_aux(cfg)) {
        if (!fu.aux || !redisaux_matches(fu.aux, &cfg->store)) {
            char err[256] = "";
            struct redisaux *ra = redisaux_open(fu.loop, &cfg->store, err, sizeof err);
            if (!ra)
                log_error("events/alerts: %s", err);
            old_aux = fu.aux;
            fu.aux = ra;
        }
    } else {
        old_aux = fu.aux;
        fu.aux = NULL;
    }
    free(fu.stream_key);
    fu.stream_key = cfg->log.stream_key ? xstrdup(cfg->log.stream_key) : NULL;
    snprintf(fu.maxlen, sizeof fu.maxlen, "%lu", cfg->log.stream_maxlen);
    fu.stream_decisions = cfg->log.stream_decisions && cfg->log.stream_key;
    actions_set_sink(fu.stream_decisions ? followup_on_decision_json : NULL, NULL);

    /* Alerts. */
    if (cfg->alerts.enabled) {
        if (!fu.alert)
            fu.alert = alert_new(fu.loop);
        alert_configure(fu.alert, &cfg->alerts,
                        cfg->store.backend == STORE_BACKEND_REDIS ? fu.aux : NULL,
                        cfg->store.prefix);
    }
    fu.evidence = cfg->alerts.evidence;
    /* The old connection goes after the alerts stopped using it (its
     * pending questions are answered "no answer": decided locally). */
    if (old_aux)
        redisaux_close(old_aux);
    if (!cfg->alerts.enabled && fu.alert) {
        alert_close(fu.alert);
        fu.alert = NULL;
    }
}

int followup_start(uv_loop_t *loop, const struct config *cfg)
{
    memset(&fu, 0, sizeof fu);
    fu.loop = loop;
    fu.started = true;
    /* The host as alerts and stream entries name it. */
    if (gethostname(fu.hostname, sizeof fu.hostname - 1) < 0 || !fu.hostname[0])
        snprintf(fu.hostname, sizeof fu.hostname, "localhost");
    uv_timer_init(loop, &fu.sweep);
    uv_timer_start(&fu.sweep, followup_on_sweep, FOLLOWUP_SWEEP_MS, FOLLOWUP_SWEEP_MS);
    uv_unref((uv_handle_t *)&fu.sweep);
    followup_apply(cfg);
    return 0;
}

void followup_reload(const struct config *cfg)
{
    if (fu.started)
        followup_apply(cfg);
}

void followup_stop(void)
{
    if (!fu.started)
        return;
    fu.started = false;
    /* Open transactions become records while the log and the stream
     * can still take them. */
    track_close_all(fu.track);
    actions_set_sink(NULL, NULL);
    if (fu.aux) {
        redisaux_close(fu.aux); /* before the alerts: it answers their questions */
        fu.aux = NULL;
    }
    if (fu.alert) {
        alert_close(fu.alert);
        fu.alert = NULL;
    }
    uv_close((uv_handle_t *)&fu.sweep, NULL);
    track_free(fu.track);
    fu.track = NULL;
    free(fu.stream_key);
    fu.stream_key = NULL;
}

bool followup_alert_stats(struct alert_stats *out)
{
    if (!fu.alert)
        return false;
    alert_get_stats(fu.alert, out);
    return true;
}

size_t followup_track_open(void)
{
    return fu.track ? track_open_count(fu.track) : 0;
}

/* followup_refused - whether Postfix refuses what was asked: a 4xx/5xx
 * code, REJECT or DEFER. */
static bool followup_refused(const char *answer)
{
    return answer[0] == '4' || answer[0] == '5' || !strncasecmp(answer, "REJECT", 6) ||
           !strncasecmp(answer, "DEFER", 5);
}

static const char *followup_get(struct request *req, enum attr a)
{
    size_t len;
    return request_get(req, a, &len);
}

static char *followup_dup(struct request *req, enum attr a)
{
    const char *v = followup_get(req, a);
    return v ? xstrdup(v) : NULL;
}

/* followup_alert - the `mail` side effect of the deciding rule. */
static void followup_alert(const struct config *cfg, const struct decision *d, double now)
{
    const struct eval *ev = d->ev;
    const struct action_rule *ar = ev->decided;
    const struct rules *r = d->rules;
    char keybuf[RULES_MAX_KEY + 16];
    const char *key = NULL;
    int ci = ar->mail_counter;
    if (ci >= 0 && ev->slot[ci] >= 0) {
        const struct store_update *u = &ev->updates[ev->slot[ci]];
        snprintf(keybuf, sizeof keybuf, "%.*s", (int)u->key_len, u->key);
        key = keybuf;
    } else {
        const char *addr = followup_get(d->req, ATTR_CLIENT_ADDRESS);
        snprintf(keybuf, sizeof keybuf, "client:%s", addr ? addr : "unknown");
        key = keybuf;
        ci = -1;
    }
    unsigned long handover = 0;
    if (!alert_check(fu.alert, ar->name, key, now, &handover))
        return;

    struct alert_info ai = {0};
    ai.rule = xstrdup(ar->name);
    ai.verdict = xstrdup(verdict_name(ar->verdict));
    ai.key = xstrdup(key);
    ai.time = now;
    ai.hostname = xstrdup(alert_hostname(fu.alert));
    ai.action = xstrdup(d->answer);
    struct textbuf b;
    textbuf_init(&b, 4096);
    for (size_t u = 0; u < ev->n_updates; u++) {
        int c = ev->update_counter[u];
        if (!ev->have_score[c])
            continue;
        textbuf_printf(&b, "%s%s=%.*f", b.len ? " " : "", r->counters[c].name,
                       r->counters[c].precision, ev->score[c]);
    }
    ai.scores = textbuf_take(&b, NULL);
    if (ci >= 0) {
        ai.counter = xstrdup(r->counters[ci].name);
        if (ev->have_score[ci]) {
            char num[64];
            snprintf(num, sizeof num, "%.*f", r->counters[ci].precision, ev->score[ci]);
            ai.score = xstrdup(num);
        }
    }
    ai.client_address = followup_dup(d->req, ATTR_CLIENT_ADDRESS);
    ai.client_name = followup_dup(d->req, ATTR_CLIENT_NAME);
    ai.helo_name = followup_dup(d->req, ATTR_HELO_NAME);
    ai.sasl_username = followup_dup(d->req, ATTR_SASL_USERNAME);
    ai.sender = followup_dup(d->req, ATTR_SENDER);
    ai.recipient = followup_dup(d->req, ATTR_RECIPIENT);
    if (fu.track && fu.evidence) {
        const struct track_msg *msgs[FOLLOWUP_MAX_EVIDENCE];
        size_t want = fu.evidence < FOLLOWUP_MAX_EVIDENCE ? fu.evidence : FOLLOWUP_MAX_EVIDENCE;
        size_t n = track_recent(fu.track, key, strlen(key), msgs, want);
        textbuf_init(&b, 256 * 1024);
        for (size_t i = 0; i < n; i++) {
            textbuf_str(&b, "  ");
            track_format_line(msgs[i], &b);
            textbuf_str(&b, "\n");
        }
        if (n)
            ai.evidence = textbuf_take(&b, NULL);
        else
            textbuf_fini(&b);
    }
    (void)cfg;
    alert_submit(fu.alert, &ai, handover);
}

void followup_decision(const struct config *cfg, const struct decision *d)
{
    if (!fu.started)
        return;
    const struct eval *ev = d->ev;
    double now = 0;
    if (fu.track) {
        now = followup_now();
        const char *keys[RULES_MAX_COUNTERS + 1];
        size_t lens[RULES_MAX_COUNTERS + 1];
        size_t nk = 0;
        for (size_t u = 0; u < ev->n_updates; u++) {
            keys[nk] = ev->updates[u].key;
            lens[nk++] = ev->updates[u].key_len;
        }
        char client[96];
        const char *addr = followup_get(d->req, ATTR_CLIENT_ADDRESS);
        if (addr) {
            int n = snprintf(client, sizeof client, "client:%s", addr);
            keys[nk] = client;
            lens[nk++] = n < 0 ? 0 : (size_t)n < sizeof client ? (size_t)n : sizeof client - 1;
        }
        const char *rules[RULES_MAX_MATCHED * 2];
        size_t nr = 0;
        for (size_t i = 0; i < ev->n_matched; i++)
            rules[nr++] = ev->matched[i]->name;
        for (size_t i = 0; i < ev->n_would; i++)
            rules[nr++] = ev->would[i]->name;
        const char *rule = NULL, *verdict = NULL;
        if (d->store_failed) {
            rule = "-";
            verdict = "on_error";
        } else if (ev->decided) {
            rule = ev->decided->name;
            verdict = verdict_name(ev->decided->verdict);
        } else if (ev->stopped_by) {
            rule = ev->stopped_by->name;
            verdict = ev->stopped_by->then == VERDICT_PERMIT ? "permit" : "dunno";
        }
        bool wanted = !cfg->tracking.when ||
                      rules_cond_match(cfg->rules, cfg->tracking.when, d->req, ev);
        struct track_event te = {
            .conn_id = d->conn_id,
            .now = now,
            .state = followup_get(d->req, ATTR_PROTOCOL_STATE),
            .instance = followup_get(d->req, ATTR_INSTANCE),
            .queue_id = followup_get(d->req, ATTR_QUEUE_ID),
            .client_address = addr,
            .client_name = followup_get(d->req, ATTR_CLIENT_NAME),
            .helo_name = followup_get(d->req, ATTR_HELO_NAME),
            .sasl_username = followup_get(d->req, ATTR_SASL_USERNAME),
            .sender = followup_get(d->req, ATTR_SENDER),
            .recipient = followup_get(d->req, ATTR_RECIPIENT),
            .size = followup_get(d->req, ATTR_SIZE),
            .recipient_count = followup_get(d->req, ATTR_RECIPIENT_COUNT),
            .rule = rule,
            .verdict = verdict,
            .refused = followup_refused(d->answer),
            .rules = rules,
            .n_rules = nr,
            .keys = keys,
            .key_lens = lens,
            .n_keys = nk,
            .wanted = wanted,
        };
        track_note(fu.track, &te);
    }
    if (fu.alert && ev->decided && ev->decided->side_mail && !d->store_failed)
        followup_alert(cfg, d, now ? now : followup_now());
}
