/*
 * explain - see explain.h.
 *
 * It uses the same pure steps as the engine (rules_eval_points,
 * rules_set_scores, rules_decide, actions_format), so what it prints is
 * what the daemon does; in between it asks the store with store_peek
 * instead of store_apply. Conditions are explained by testing each node
 * of the condition tree again with rules_cond_match: evaluation is pure,
 * so the second test gives the answer the first one did.
 */
#include "explain.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "actions.h"
#include "cidr.h"
#include "config.h"
#include "decay.h"
#include "log.h"
#include "protocol.h"
#include "rules.h"
#include "store.h"
#include "xalloc.h"

#define EXPLAIN_MAX_INPUT (64u << 20) /* bytes of stdin, at most */
#define EXPLAIN_CONNECT_MS 3000       /* waiting for a Redis store to come up */

struct explain {
    struct config *cfg;
    struct store *st;
    uv_loop_t loop;
    bool fresh;                 /* private memory store, requests add up */
    FILE *out;
    /* The store's answer. */
    bool done;
    int status;
    double scores[STORE_MAX_UPDATES];
};

static double explain_instant;  /* --fresh: the one instant every request arrives at */

static double explain_clock(void)
{
    return explain_instant;
}

static const char *const explain_ops[] = {">=", ">", "<=", "<", "==", "!="};

/* explain_value - an attribute's value for display: quoted and cut. */
static const char *explain_value(struct request *req, enum attr a, char *buf, size_t cap)
{
    size_t len;
    const char *v = request_get(req, a, &len);
    if (!v)
        return "(absent)";
    char q[LOG_QUOTE_BUF];
    snprintf(buf, cap, "\"%s\"", log_quote(v, len, q, sizeof q));
    return buf;
}

static const char *explain_subject(const struct rules *r, const struct subject *s)
{
    return s->is_counter ? r->counters[s->index].name : attr_name((enum attr)s->index);
}

/* explain_cond - one node per line, children indented, with the outcome. */
static void explain_cond(struct explain *x, const struct rules *r, const struct cond *c,
                         struct request *req, const struct eval *ev, int depth, bool top)
{
    bool yes = rules_cond_match(r, c, req, ev);
    const char *res = yes ? "yes" : "no";
    char vb[LOG_QUOTE_BUF + 4], net[64], q[LOG_QUOTE_BUF];
    int ind = depth * 2;
    switch (c->kind) {
    case COND_TRUE:
        fprintf(x->out, "%*salways: yes\n", ind, "");
        return;
    case COND_ALL:
    case COND_ANY:
        /* A group of one is its member. */
        if (c->n_children == 1) {
            explain_cond(x, r, c->children[0], req, ev, depth, top);
            return;
        }
        /* A when: mapping is an "all of" its keys: shown flat. */
        if (!(top && c->kind == COND_ALL))
            fprintf(x->out, "%*s%s: %s\n", ind, "", c->kind == COND_ALL ? "all of" : "any of", res);
        for (size_t i = 0; i < c->n_children; i++)
            explain_cond(x, r, c->children[i], req, ev,
                         top && c->kind == COND_ALL ? depth : depth + 1, false);
        return;
    case COND_NOT:
        fprintf(x->out, "%*snot: %s\n", ind, "", res);
        explain_cond(x, r, c->children[0], req, ev, depth + 1, false);
        return;
    default:
        break;
    }
    const char *name = explain_subject(r, &c->subject);
    if (c->subject.is_counter) {
        int ci = c->subject.index;
        if (ev && ev->have_score[ci])
            fprintf(x->out, "%*s%s score %.*f %s %.15g: %s\n", ind, "", name,
                    r->counters[ci].precision, ev->score[ci], explain_ops[c->op], c->number, res);
        else
            fprintf(x->out, "%*s%s (no key for this request) %s %.15g: %s\n", ind, "", name,
                    explain_ops[c->op], c->number, res);
        return;
    }
    const char *v = explain_value(req, (enum attr)c->subject.index, vb, sizeof vb);
    switch (c->kind) {
    case COND_EQUALS:
        fprintf(x->out, "%*s%s %s is \"%s\": %s\n", ind, "", name, v,
                log_quote(c->text, c->text_len, q, sizeof q), res);
        break;
    case COND_EMPTY:
        fprintf(x->out, "%*s%s %s is empty: %s\n", ind, "", name, v, res);
        break;
    case COND_CIDR:
        ipaddr_format_prefix(&c->net.addr, c->net.bits, c->net.bits, net, sizeof net);
        fprintf(x->out, "%*s%s %s in %s: %s\n", ind, "", name, v, net, res);
        break;
    case COND_IN_LIST:
        fprintf(x->out, "%*s%s %s in list %s: %s\n", ind, "", name, v, r->lists[c->list].name, res);
        break;
    case COND_REGEX:
        fprintf(x->out, "%*s%s %s matches /%s/: %s\n", ind, "", name, v, c->text ? c->text : "?",
                res);
        break;
    case COND_CMP:
        fprintf(x->out, "%*s%s %s %s %.15g: %s\n", ind, "", name, v, explain_ops[c->op], c->number,
                res);
        break;
    case COND_SAME_AS: {
        char ob[LOG_QUOTE_BUF + 4];
        fprintf(x->out, "%*s%s %s same as %s %s: %s\n", ind, "", name, v, attr_name(c->other),
                explain_value(req, c->other, ob, sizeof ob), res);
        break;
    }
    default:
        fprintf(x->out, "%*s%s: %s\n", ind, "", name, res);
        break;
    }
}

static void explain_on_scores(void *arg, int status, const double *scores, size_t n, double now)
{
    (void)now;
    struct explain *x = arg;
    x->done = true;
    x->status = status;
    if (status == STORE_OK)
        memcpy(x->scores, scores, n * sizeof *scores);
}

static void explain_on_reset(void *arg, int status)
{
    struct explain *x = arg;
    x->done = true;
    x->status = status;
}

/* explain_wait - run the loop until the store answered. */
static int explain_wait(struct explain *x)
{
    while (!x->done)
        if (uv_run(&x->loop, UV_RUN_ONCE) == 0 && !x->done)
            return -EIO;
    return x->status == STORE_OK ? 0 : -EIO;
}

static void explain_header(struct explain *x, struct request *req, unsigned no)
{
    static const struct {
        enum attr a;
        const char *label;
    } shown[] = {{ATTR_CLIENT_ADDRESS, "client"}, {ATTR_HELO_NAME, "helo"},
                 {ATTR_SENDER, "sender"},         {ATTR_RECIPIENT, "recipient"},
                 {ATTR_SASL_USERNAME, "sasl_username"}, {ATTR_SIZE, "size"}};
    char q[LOG_QUOTE_BUF];
    size_t len;
    const char *state = request_get(req, ATTR_PROTOCOL_STATE, &len);
    fprintf(x->out, "request %u: %s", no, state ? log_quote(state, len, q, sizeof q) : "(no protocol_state)");
    for (size_t i = 0; i < sizeof shown / sizeof shown[0]; i++) {
        const char *v = request_get(req, shown[i].a, &len);
        if (v && (len || shown[i].a == ATTR_SENDER))
            fprintf(x->out, " %s=<%s>", shown[i].label, log_quote(v, len, q, sizeof q));
    }
    fputc('\n', x->out);
}

/* explain_points - every points rule, as rules_eval_points saw it. */
static void explain_points(struct explain *x, const struct rules *r, struct request *req,
                           const struct eval *ev)
{
    fprintf(x->out, "  points rules:\n");
    bool stopped = false;
    for (size_t i = 0; i < r->n_points; i++) {
        const struct points_rule *pr = &r->points[i];
        if (stopped) {
            fprintf(x->out, "    %s: not reached (counting stopped at %s)\n", pr->name,
                    ev->stopped_by->name);
            continue;
        }
        bool yes = !pr->when || rules_cond_match(r, pr->when, req, ev);
        fprintf(x->out, "    %s (%s): %s%s\n", pr->name, pr->where, yes ? "matched" : "no match",
                yes && pr->log_only ? " (mode: log, adds nothing)" : "");
        if (pr->when)
            explain_cond(x, r, pr->when, req, ev, 3, true);
        if (!yes || pr->log_only)
            continue;
        for (size_t k = 0; k < pr->n_adds; k++) {
            const struct add *a = &pr->adds[k];
            int u = ev->slot[a->counter];
            double amount = 0;
            if (a->kind == ADD_CONST) {
                amount = a->value;
            } else {
                double n;
                if (request_number(req, a->attr, &n))
                    amount = n / a->value;
            }
            if (u < 0) {
                fprintf(x->out, "      %+g %s: no key for this request, not counted\n", amount,
                        r->counters[a->counter].name);
                continue;
            }
            char q[LOG_QUOTE_BUF];
            fprintf(x->out, "      %+g %s key %s\n", amount, r->counters[a->counter].name,
                    log_quote(ev->updates[u].key, ev->updates[u].key_len, q, sizeof q));
        }
        if (pr->then_set) {
            fprintf(x->out, "      then: %s: counting stops here, no action rule is tested\n",
                    pr->then == VERDICT_PERMIT ? "permit" : "ok");
            stopped = true;
        }
    }
}

static void explain_scores(struct explain *x, const struct rules *r, const struct eval *ev,
                           const double *before, const double *after)
{
    fprintf(x->out, "  counters:\n");
    if (ev->n_updates == 0)
        fprintf(x->out, "    (none concerns this request)\n");
    for (size_t u = 0; u < ev->n_updates; u++) {
        const struct counter *c = &r->counters[ev->update_counter[u]];
        char q[LOG_QUOTE_BUF];
        char model[64];
        if (c->decay.kind == DECAY_HALF_LIFE)
            snprintf(model, sizeof model, "half_life %gs", c->decay.param);
        else
            snprintf(model, sizeof model, "leak %g/h", c->decay.param * 3600);
        fprintf(x->out, "    %s key %s: before %.*f, %+g, after %.*f (%s)\n", c->name,
                log_quote(ev->updates[u].key, ev->updates[u].key_len, q, sizeof q), c->precision,
                decay_round(before[u], c->precision), ev->updates[u].points, c->precision,
                decay_round(after[u], c->precision), model);
    }
}

static void explain_actions(struct explain *x, const struct rules *r, struct request *req,
                            const struct eval *ev)
{
    fprintf(x->out, "  action rules:\n");
    const struct action_rule *decided = NULL;
    for (size_t i = 0; i < r->n_actions; i++) {
        const struct action_rule *ar = &r->actions[i];
        if (decided) {
            fprintf(x->out, "    %s: not tested (first match wins: %s)\n", ar->name, decided->name);
            continue;
        }
        bool yes = !ar->when || rules_cond_match(r, ar->when, req, ev);
        const char *what = !yes ? "no match" : ar->log_only ? "matched, mode: log (would " : "matched";
        fprintf(x->out, "    %s (%s): %s%s%s\n", ar->name, ar->where, what,
                yes && ar->log_only ? verdict_name(ar->verdict) : "",
                yes && ar->log_only ? "; testing goes on)" : "");
        if (ar->when)
            explain_cond(x, r, ar->when, req, ev, 3, true);
        if (yes && !ar->log_only)
            decided = ar;
    }
}

/* explain_delete - with --fresh, the decided rule's `delete` resets its
 * counters in the explain store, as the daemon's engine_delete does in
 * its own: the next requests see them gone. Shown, not run, against
 * the configured store (explain never writes there). */
static int explain_delete(struct explain *x, const struct eval *ev, const struct action_rule *ar)
{
    if (!ar || !ar->side_delete)
        return 0;
    const char *keys[RULES_MAX_COUNTERS];
    size_t lens[RULES_MAX_COUNTERS], n = 0;
    for (size_t i = 0; i < ar->n_delete; i++) {
        int u = ev->slot[ar->delete_counters[i]];
        if (u < 0)
            continue;
        keys[n] = ev->updates[u].key;
        lens[n] = ev->updates[u].key_len;
        fprintf(x->out, "  delete: key %.*s%s\n", (int)lens[n], keys[n],
                x->fresh ? "" : " (not done: explain only reads this store)");
        n++;
    }
    if (!n || !x->fresh)
        return 0;
    x->done = false;
    store_reset(x->st, keys, lens, n, explain_on_reset, x);
    return explain_wait(x);
}

/* explain_one - one request, start to finish. Returns 0 or -EIO (store). */
static int explain_one(struct explain *x, struct request *req, unsigned no)
{
    const struct rules *r = x->cfg->rules;
    struct eval *ev = xmalloc(sizeof *ev);
    double before[STORE_MAX_UPDATES], after[STORE_MAX_UPDATES];
    int rc = 0;

    explain_header(x, req, no);
    bool stopped = rules_eval_points(r, req, ev);
    explain_points(x, r, req, ev);

    if (ev->n_updates) {
        x->done = false;
        store_peek(x->st, ev->updates, ev->n_updates, explain_on_scores, x);
        if (explain_wait(x) < 0) {
            fprintf(x->out, "  counters: the store did not answer\n\n");
            free(ev);
            return -EIO;
        }
        memcpy(before, x->scores, ev->n_updates * sizeof *before);
        if (x->fresh) {
            x->done = false;
            store_apply(x->st, ev->updates, ev->n_updates, explain_on_scores, x);
            if (explain_wait(x) < 0) {
                free(ev);
                return -EIO;
            }
            memcpy(after, x->scores, ev->n_updates * sizeof *after);
        } else {
            for (size_t u = 0; u < ev->n_updates; u++)
                after[u] = decay_apply(&ev->updates[u].decay, before[u], 0, ev->updates[u].points);
        }
    }
    explain_scores(x, r, ev, before, after);

    char answer[ACTIONS_MAX_ANSWER];
    if (stopped) {
        fprintf(x->out, "  action rules: not tested (whitelisted by %s)\n", ev->stopped_by->name);
        snprintf(answer, sizeof answer, "%s", ev->stopped_by->then == VERDICT_PERMIT ? "OK" : "DUNNO");
        fprintf(x->out, "  verdict: %s by %s\n", ev->stopped_by->then == VERDICT_PERMIT ? "permit" : "dunno",
                ev->stopped_by->name);
    } else {
        if (ev->n_updates)
            rules_set_scores(r, ev, after, ev->n_updates);
        explain_actions(x, r, req, ev);
        const struct action_rule *ar = rules_decide(r, req, ev);
        actions_format(r, ar, req, ev, answer, sizeof answer);
        for (size_t i = 0; i < ev->n_would; i++)
            fprintf(x->out, "  would: %s by %s (mode: log)\n", verdict_name(ev->would[i]->verdict),
                    ev->would[i]->name);
        if (ar)
            fprintf(x->out, "  verdict: %s by %s\n", verdict_name(ar->verdict), ar->name);
        else
            fprintf(x->out, "  verdict: dunno (no action rule matched)\n");
        if (explain_delete(x, ev, ar) < 0)
            rc = -EIO;
    }
    fprintf(x->out, "  answer: action=%s\n\n", answer);
    free(ev);
    return rc;
}

static void explain_usage(FILE *fp)
{
    fprintf(fp, "usage: smtpguard explain -c FILE [--fresh] < requests\n"
                "\n"
                "Reads policy requests (Postfix wire format) on stdin and prints why each\n"
                "gets its verdict. Changes no stored counter: reads the configured store,\n"
                "or, with --fresh, an empty memory store in which the requests add up.\n");
}

/* explain_read_all - stdin into a buffer (capped). */
static char *explain_read_all(FILE *in, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= EXPLAIN_MAX_INPUT) {
                free(buf);
                return NULL;
            }
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        size_t got = fread(buf + n, 1, cap - n, in);
        n += got;
        if (got == 0)
            break;
    }
    /* End with an empty line, so the last request needs none of its own. */
    buf = xrealloc(buf, n + 3);
    if (n && buf[n - 1] != '\n')
        buf[n++] = '\n';
    buf[n++] = '\n';
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void explain_on_connect_timer(uv_timer_t *t)
{
    (void)t;
}

/* explain_wait_up - a Redis store connects asynchronously: give it a
 * moment before the first peek. */
static void explain_wait_up(struct explain *x)
{
    uv_timer_t t;
    uv_timer_init(&x->loop, &t);
    uint64_t deadline = uv_now(&x->loop) + EXPLAIN_CONNECT_MS;
    while (!store_is_up(x->st) && uv_now(&x->loop) < deadline) {
        uv_timer_start(&t, explain_on_connect_timer, 20, 0);
        uv_run(&x->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&x->loop, UV_RUN_NOWAIT);
}

int explain_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"fresh", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = "/etc/smtpguard/smtpguard.yaml";
    struct explain x = {.out = stdout};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:fh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'f':
            x.fresh = true;
            break;
        case 'h':
            explain_usage(stdout);
            return 0;
        default:
            explain_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "smtpguard explain: unexpected argument \"%s\"\n", argv[optind]);
        explain_usage(stderr);
        return 2;
    }
    log_threshold = LOG_LEVEL_ERROR;
    struct config_errors errs = {0};
    x.cfg = config_load(path, &errs);
    if (!x.cfg) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msgs[i]);
        fprintf(stderr, "smtpguard explain: %s: %zu error%s\n", path, errs.n, errs.n == 1 ? "" : "s");
        config_errors_fini(&errs);
        return 1;
    }
    size_t len;
    char *input = explain_read_all(stdin, &len);
    if (!input) {
        fprintf(stderr, "smtpguard explain: more than %u bytes on stdin\n", EXPLAIN_MAX_INPUT);
        config_unref(x.cfg);
        return 1;
    }

    if (!x.fresh && x.cfg->store.backend == STORE_BACKEND_MEMORY) {
        /* The daemon's memory store lives in the daemon: a private empty
         * one here would explain every request as a client's first. */
        fprintf(stderr, "smtpguard explain: the configured store is the daemon's own memory: "
                        "its scores cannot be read from here; use --fresh (an empty store of "
                        "explain's own), or a Redis store\n");
        free(input);
        config_unref(x.cfg);
        return 3;
    }
    uv_loop_init(&x.loop);
    struct store_config sc = x.cfg->store;
    if (x.fresh) {
        memset(&sc, 0, sizeof sc);
        sc.backend = STORE_BACKEND_MEMORY;
        sc.memory_max_keys = 1000000;
        /* The requests are taken as arriving together: no decay between
         * them, so a transcript comes out the same on every run. */
        explain_instant = store_memory_clock();
        store_memory_clock = explain_clock;
    }
    char err[512] = "";
    int rc = store_open(&x.st, &sc, &x.loop, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "smtpguard explain: cannot open the store: %s\n", err);
        free(input);
        config_unref(x.cfg);
        uv_loop_close(&x.loop);
        return 3;
    }
    if (!x.fresh)
        explain_wait_up(&x);
    fprintf(x.out, "# smtpguard explain: %s, store %s%s\n\n", path, store_name(x.st),
            x.fresh ? " (fresh, private to this run)" : " (read only)");

    struct request req;
    request_init(&req);
    struct protocol_scan scan;
    size_t pos = 0;
    unsigned no = 0;
    int status = 0;
    while (pos < len && status == 0) {
        /* Blank lines and # comments between requests. */
        if (input[pos] == '\n' || input[pos] == '\r' || input[pos] == '#') {
            char *nl = memchr(input + pos, '\n', len - pos);
            pos = nl ? (size_t)(nl - input) + 1 : len;
            continue;
        }
        protocol_scan_reset(&scan);
        size_t req_len = 0;
        const char *why = NULL;
        enum protocol_status ps = protocol_scan(&scan, &x.cfg->limits.protocol, input + pos,
                                                len - pos, &req_len, &why);
        if (ps == PROTOCOL_NEED_MORE) {
            ps = PROTOCOL_ERROR;
            why = "incomplete request";
        }
        if (ps == PROTOCOL_READY && protocol_parse(input + pos, req_len, &req, &why) < 0)
            ps = PROTOCOL_ERROR;
        if (ps == PROTOCOL_ERROR) {
            fprintf(stderr, "smtpguard explain: request %u: %s\n", no + 1, why ? why : "malformed");
            status = 1;
            break;
        }
        pos += req_len;
        if (explain_one(&x, &req, ++no) < 0) {
            fprintf(stderr, "smtpguard explain: the %s store did not answer (try --fresh)\n",
                    store_name(x.st));
            status = 3;
        }
        request_reset(&req);
    }
    if (no == 0 && status == 0) {
        fprintf(stderr, "smtpguard explain: no request on stdin\n");
        status = 1;
    }
    request_fini(&req);
    store_close(x.st);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&x.loop) != 0)
        fprintf(stderr, "smtpguard explain: handles left open\n");
    free(input);
    config_unref(x.cfg);
    fflush(stdout);
    return status;
}
