/*
 * rules - evaluation of the compiled rule set. See rules.h.
 *
 * Conditions are a small tree (ALL/ANY/NOT over leaves) built by config.c.
 * Leaves read one subject: an attribute of the request (derived ones are
 * computed on first use) or, in action rules, a counter's new score,
 * rounded to the counter's precision so that "the 5th recipient trips
 * >= 5" holds although decay leaves 4.9998.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "rules.h"

#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cidr.h"

const char *verdict_name(enum verdict v)
{
    switch (v) {
    case VERDICT_DUNNO:
        return "dunno";
    case VERDICT_PERMIT:
        return "permit";
    case VERDICT_DEFER:
        return "defer";
    case VERDICT_REJECT:
        return "reject";
    case VERDICT_HOLD:
        return "hold";
    case VERDICT_DISCARD:
        return "discard";
    case VERDICT_REDIRECT:
        return "redirect";
    case VERDICT_PREPEND:
        return "prepend";
    case VERDICT_FILTER:
        return "filter";
    case VERDICT_WARN:
        return "warn";
    case VERDICT_SLEEP:
        return "sleep";
    }
    return "?";
}

int verdict_parse(const char *s, size_t len, enum verdict *out)
{
    for (int v = VERDICT_DUNNO; v <= VERDICT_SLEEP; v++) {
        const char *name = verdict_name((enum verdict)v);
        if (strlen(name) == len && strncasecmp(name, s, len) == 0) {
            *out = (enum verdict)v;
            return 0;
        }
    }
    /* Postfix's word for permit. */
    if (len == 2 && strncasecmp(s, "ok", 2) == 0) {
        *out = VERDICT_PERMIT;
        return 0;
    }
    return -EINVAL;
}

int rules_find_counter(const struct rules *r, const char *name, size_t len)
{
    for (size_t i = 0; i < r->n_counters; i++)
        if (strlen(r->counters[i].name) == len && memcmp(r->counters[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

int rules_find_list(const struct rules *r, const char *name, size_t len)
{
    for (size_t i = 0; i < r->n_lists; i++)
        if (strlen(r->lists[i].name) == len && memcmp(r->lists[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

void rules_eval_reset(struct eval *ev, const struct rules *r)
{
    ev->n_updates = 0;
    ev->n_matched = 0;
    ev->n_would = 0;
    ev->n_would_points = 0;
    ev->stopped_by = NULL;
    ev->decided = NULL;
    for (size_t i = 0; i < r->n_counters; i++) {
        ev->slot[i] = -1;
        ev->points_added[i] = 0;
        ev->have_score[i] = false;
        ev->score[i] = 0;
    }
}

const char *rules_counter_key(const struct counter *c, struct request *req, size_t *len)
{
    char buf[RULES_MAX_KEY];
    size_t o = 0;
    size_t nlen = strlen(c->name);
    if (nlen + 1 >= sizeof buf)
        return NULL;
    memcpy(buf, c->name, nlen);
    o = nlen;
    buf[o++] = ':';
    for (unsigned i = 0; i < c->n_parts; i++) {
        const struct key_part *p = &c->parts[i];
        size_t vlen;
        const char *v;
        if (p->v4_bits >= 0)
            v = request_client_prefix(req, p->v4_bits, p->v6_bits, &vlen);
        else
            v = request_get(req, p->attr, &vlen);
        if (!v || vlen == 0)
            return NULL;
        if (i > 0) {
            if (o + 1 >= sizeof buf)
                return NULL;
            buf[o++] = '|';
        }
        if (o + vlen >= sizeof buf)
            return NULL;
        bool fold = p->v4_bits < 0 && attr_is_case_insensitive(p->attr);
        for (size_t k = 0; k < vlen; k++) {
            char ch = v[k];
            if (fold && ch >= 'A' && ch <= 'Z')
                ch = (char)(ch - 'A' + 'a');
            buf[o++] = ch;
        }
    }
    *len = o;
    return arena_strndup(&req->arena, buf, o);
}

/* rules_add_update - the update slot of counter ci, creating it. */
static int rules_update_slot(const struct rules *r, struct request *req, struct eval *ev, int ci)
{
    if (ev->slot[ci] >= 0)
        return ev->slot[ci];
    if (ev->slot[ci] == -2) /* key not computable for this request */
        return -1;
    size_t klen;
    const char *key = rules_counter_key(&r->counters[ci], req, &klen);
    if (!key || ev->n_updates >= RULES_MAX_COUNTERS) {
        ev->slot[ci] = -2;
        return -1;
    }
    size_t u = ev->n_updates++;
    ev->updates[u].key = key;
    ev->updates[u].key_len = klen;
    ev->updates[u].decay = r->counters[ci].decay;
    ev->updates[u].points = 0;
    ev->update_counter[u] = ci;
    ev->slot[ci] = (int)u;
    return (int)u;
}

static double rules_add_amount(const struct add *a, struct request *req)
{
    if (a->kind == ADD_CONST)
        return a->value;
    double n;
    if (!request_number(req, a->attr, &n))
        return 0;
    return n / a->value;
}

bool rules_eval_points(const struct rules *r, struct request *req, struct eval *ev)
{
    rules_eval_reset(ev, r);
    for (size_t i = 0; i < r->n_points; i++) {
        const struct points_rule *pr = &r->points[i];
        if (pr->when && !rules_cond_match(r, pr->when, req, ev))
            continue;
        if (pr->log_only) {
            if (ev->n_would_points < RULES_MAX_MATCHED)
                ev->would_points[ev->n_would_points++] = pr;
            continue;
        }
        if (ev->n_matched < RULES_MAX_MATCHED)
            ev->matched[ev->n_matched++] = pr;
        for (size_t k = 0; k < pr->n_adds; k++) {
            const struct add *a = &pr->adds[k];
            int u = rules_update_slot(r, req, ev, a->counter);
            if (u < 0)
                continue;
            double amount = rules_add_amount(a, req);
            ev->updates[u].points += amount;
            ev->points_added[a->counter] += amount;
        }
        if (pr->then_set) {
            /* Points added so far (this rule's too: a DNSWL may subtract
             * and stop) still count; nothing after this rule does. */
            ev->stopped_by = pr;
            return true;
        }
    }
    /* Counters that actions read are fetched in the same round trip. */
    for (size_t ci = 0; ci < r->n_counters; ci++)
        if (r->counter_read[ci])
            rules_update_slot(r, req, ev, (int)ci);
    return false;
}

void rules_set_scores(const struct rules *r, struct eval *ev, const double *scores, size_t n)
{
    for (size_t u = 0; u < n && u < ev->n_updates; u++) {
        int ci = ev->update_counter[u];
        ev->score[ci] = decay_round(scores[u], r->counters[ci].precision);
        ev->have_score[ci] = true;
    }
}

static bool rules_cmp(enum cmp_op op, double a, double b)
{
    switch (op) {
    case CMP_GE:
        return a >= b;
    case CMP_GT:
        return a > b;
    case CMP_LE:
        return a <= b;
    case CMP_LT:
        return a < b;
    case CMP_EQ:
        return a == b;
    case CMP_NE:
        return a != b;
    }
    return false;
}

static bool rules_text_equals(const struct cond *c, const char *v, size_t vlen)
{
    if (vlen != c->text_len)
        return false;
    if (c->subject.is_counter)
        return false;
    bool fold = attr_is_case_insensitive((enum attr)c->subject.index) ||
                c->subject.index == ATTR_PROTOCOL_STATE || c->subject.index == ATTR_PROTOCOL_NAME ||
                c->subject.index == ATTR_REQUEST;
    return fold ? strncasecmp(v, c->text, vlen) == 0 : memcmp(v, c->text, vlen) == 0;
}

static bool rules_regex_match(const struct cond *c, const char *v, size_t vlen)
{
    /* One match-data block per thread, sized for the whole match only:
     * we never read captures, and it saves an allocation per test. */
    static _Thread_local pcre2_match_data *md;
    if (!md)
        md = pcre2_match_data_create(1, NULL);
    int rc = pcre2_match((const pcre2_code *)c->regex, (PCRE2_SPTR)v, vlen, 0, 0, md, NULL);
    return rc >= 0;
}

bool rules_cond_match(const struct rules *r, const struct cond *c, struct request *req,
                      const struct eval *ev)
{
    switch (c->kind) {
    case COND_TRUE:
        return true;
    case COND_ALL:
        for (size_t i = 0; i < c->n_children; i++)
            if (!rules_cond_match(r, c->children[i], req, ev))
                return false;
        return true;
    case COND_ANY:
        for (size_t i = 0; i < c->n_children; i++)
            if (rules_cond_match(r, c->children[i], req, ev))
                return true;
        return false;
    case COND_NOT:
        return !rules_cond_match(r, c->children[0], req, ev);
    default:
        break;
    }

    /* Leaves. A counter subject has a number and no text. */
    if (c->subject.is_counter) {
        int ci = c->subject.index;
        if (c->kind != COND_CMP || !ev || !ev->have_score[ci])
            return false;
        return rules_cmp(c->op, ev->score[ci], c->number);
    }

    size_t vlen = 0;
    const char *v = request_get(req, (enum attr)c->subject.index, &vlen);
    switch (c->kind) {
    case COND_EMPTY:
        return !v || vlen == 0;
    case COND_EQUALS:
        return v && rules_text_equals(c, v, vlen);
    case COND_CIDR: {
        struct ipaddr ip;
        if (c->subject.index == ATTR_CLIENT_ADDRESS) {
            const struct ipaddr *cip = request_client_ip(req);
            return cip && cidr_contains(&c->net, cip);
        }
        return v && ipaddr_parse(v, vlen, &ip) == 0 && cidr_contains(&c->net, &ip);
    }
    case COND_IN_LIST:
        if (v && c->subject.index == ATTR_CLIENT_ADDRESS)
            return list_match_addr(&r->lists[c->list], v, vlen, request_client_ip(req));
        return v && list_match(&r->lists[c->list], v, vlen);
    case COND_REGEX:
        return v && rules_regex_match(c, v, vlen);
    case COND_SAME_AS: {
        /* Both present and equal, case-insensitively (addresses). */
        size_t olen;
        const char *o = request_get(req, c->other, &olen);
        return v && o && vlen == olen && vlen > 0 && strncasecmp(v, o, vlen) == 0;
    }
    case COND_CMP: {
        double n;
        return request_number(req, (enum attr)c->subject.index, &n) && rules_cmp(c->op, n, c->number);
    }
    default:
        return false;
    }
}

const struct action_rule *rules_decide(const struct rules *r, struct request *req, struct eval *ev)
{
    ev->decided = NULL;
    for (size_t i = 0; i < r->n_actions; i++) {
        const struct action_rule *ar = &r->actions[i];
        if (ar->when && !rules_cond_match(r, ar->when, req, ev))
            continue;
        if (ar->log_only) {
            if (ev->n_would < RULES_MAX_MATCHED)
                ev->would[ev->n_would++] = ar;
            continue;
        }
        ev->decided = ar;
        return ar;
    }
    return NULL;
}

int rules_template_resolve(void *rules, const char *name, size_t len)
{
    const struct rules *r = rules;
    if (len == 4 && memcmp(name, "rule", 4) == 0)
        return RULES_VAR_RULE;
    if (len > 6 && memcmp(name, "score.", 6) == 0) {
        int ci = rules_find_counter(r, name + 6, len - 6);
        return ci < 0 ? -1 : RULES_VAR_SCORE + ci;
    }
    if (len > 4 && memcmp(name, "key.", 4) == 0) {
        int ci = rules_find_counter(r, name + 4, len - 4);
        return ci < 0 ? -1 : RULES_VAR_KEY + ci;
    }
    return attr_lookup(name, len);
}

const char *rules_template_value(void *vctx, int id, size_t *len)
{
    struct rules_template_ctx *ctx = vctx;
    *len = 0;
    if (id == RULES_VAR_RULE) {
        *len = ctx->rule ? strlen(ctx->rule) : 0;
        return ctx->rule;
    }
    if (id >= RULES_VAR_KEY) {
        int ci = id - RULES_VAR_KEY;
        int u = ctx->ev ? ctx->ev->slot[ci] : -1;
        if (u < 0)
            return NULL;
        /* Show the value part, without "name:". */
        const char *k = ctx->ev->updates[u].key;
        size_t skip = strlen(ctx->rules->counters[ci].name) + 1;
        *len = ctx->ev->updates[u].key_len - skip;
        return k + skip;
    }
    if (id >= RULES_VAR_SCORE) {
        int ci = id - RULES_VAR_SCORE;
        if (!ctx->ev || !ctx->ev->have_score[ci])
            return NULL;
        int n = snprintf(ctx->numbuf, sizeof ctx->numbuf, "%.*f",
                         ctx->rules->counters[ci].precision, ctx->ev->score[ci]);
        *len = n > 0 ? (size_t)n : 0;
        return ctx->numbuf;
    }
    return request_get(ctx->req, (enum attr)id, len);
}

static void rules_cond_free(struct cond *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_children; i++)
        rules_cond_free(c->children[i]);
    free(c->children);
    free(c->text);
    if (c->regex)
        pcre2_code_free((pcre2_code *)c->regex);
    free(c);
}

void rules_free(struct rules *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_counters; i++)
        free(r->counters[i].name);
    free(r->counters);
    for (size_t i = 0; i < r->n_lists; i++)
        list_free(&r->lists[i]);
    free(r->lists);
    for (size_t i = 0; i < r->n_points; i++) {
        free(r->points[i].name);
        free(r->points[i].where);
        rules_cond_free(r->points[i].when);
        free(r->points[i].adds);
    }
    free(r->points);
    for (size_t i = 0; i < r->n_actions; i++) {
        struct action_rule *a = &r->actions[i];
        free(a->name);
        free(a->where);
        rules_cond_free(a->when);
        if (a->arg)
            template_free(a->arg);
        if (a->message)
            template_free(a->message);
        free(a->delete_counters);
    }
    free(r->actions);
    free(r->counter_read);
    free(r);
}
