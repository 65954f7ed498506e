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

#include "ascii.h"
#include "cidr.h"
#include "log.h"
#include "sha1.h"
#include "xalloc.h"

#define RULES_REGEX_MATCH_LIMIT 100000  /* backtracking steps per test */
#define RULES_REGEX_DEPTH_LIMIT 10000   /* nested backtracking */

static struct log_limiter rules_regex_limiter;

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

/* rules_eval_reset_counts - forget what the points and actions did,
 * keep the DNS answers. */
static void rules_eval_reset_counts(struct eval *ev, const struct rules *r)
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

void rules_eval_reset(struct eval *ev, const struct rules *r)
{
    rules_eval_reset_counts(ev, r);
    ev->dns_ready = false;
    for (size_t i = 0; i < r->n_dnsqs && i < RULES_MAX_DNS; i++) {
        ev->dns_need[i] = false;
        memset(&ev->dns[i], 0, sizeof ev->dns[i]);
    }
}


/* rules_key_part - the value of one key part, or NULL when missing. */
static const char *rules_key_part(const struct key_part *p, struct request *req, size_t *len)
{
    const char *v;
    if (p->v4_bits >= 0)
        v = request_client_prefix(req, p->v4_bits, p->v6_bits, len);
    else
        v = request_get(req, p->attr, len);
    return v && *len ? v : NULL;
}

/* rules_copy_fold - copy n bytes, lower-cased when fold. */
static void rules_copy_fold(char *dst, const char *src, size_t n, bool fold)
{
    if (fold)
        ascii_lower(dst, src, n);
    else
        memcpy(dst, src, n);
}

static bool rules_part_folds(const struct key_part *p)
{
    return p->v4_bits < 0 && attr_is_case_insensitive(p->attr);
}

/* rules_counter_key_hashed - "NAME:#" + the SHA-1 of the values joined
 * by sep (folded as the plain key would be): '|' for a key too long, a
 * NUL for one that would be ambiguous (see rules_counter_key). */
static const char *rules_counter_key_hashed(const struct counter *c, const char *const *vals,
                                            const size_t *lens, char sep, struct request *req,
                                            size_t *len)
{
    static const char hex[] = "0123456789abcdef";
    size_t nlen = c->name_len;
    unsigned char digest[SHA1_DIGEST_LEN];
    struct sha1 h;
    char chunk[64];

    sha1_init(&h);
    for (unsigned i = 0; i < c->n_parts; i++) {
        if (i > 0)
            sha1_update(&h, &sep, 1);
        for (size_t k = 0; k < lens[i]; k += sizeof chunk) {
            size_t n = lens[i] - k < sizeof chunk ? lens[i] - k : sizeof chunk;
            rules_copy_fold(chunk, vals[i] + k, n, rules_part_folds(&c->parts[i]));
            sha1_update(&h, chunk, n);
        }
    }
    sha1_final(&h, digest);
    *len = nlen + 2 + 2 * SHA1_DIGEST_LEN;
    char *key = arena_alloc(&req->arena, *len + 1);
    char *o = key;
    memcpy(o, c->name, nlen);
    o += nlen;
    *o++ = ':';
    *o++ = '#';
    for (int i = 0; i < SHA1_DIGEST_LEN; i++) {
        *o++ = hex[digest[i] >> 4];
        *o++ = hex[digest[i] & 15];
    }
    *o = '\0';
    return key;
}

/*
 * rules_counter_key - "NAME:value[|value...]", lower-cased where the
 * attribute is case-insensitive. A key that would be RULES_MAX_KEY bytes
 * or longer becomes "NAME:#" + the SHA-1 of the value: a sender cannot
 * escape counting with a 1 kB address, and the store's keys stay short.
 * Two kinds of value would make a key that another value also makes,
 * and are hashed too, their parts joined by a NUL (which no value holds)
 * rather than '|': a part holding '|' in a key of several parts ("a|b" +
 * "c" and "a" + "b|c" both wrote "a|b|c"), and a value starting with
 * '#' (a HELO "#<40 hex digits>" wrote the hashed key of some long one).
 * Other keys are as they always were.
 * The values are looked up first and the key is written once, straight
 * into the arena: this runs for every counter of every request.
 */
const char *rules_counter_key(const struct counter *c, struct request *req, size_t *len)
{
    const char *vals[RULES_MAX_KEY_PARTS];
    size_t lens[RULES_MAX_KEY_PARTS];
    size_t nlen = c->name_len;
    size_t total = nlen + 1;

    for (unsigned i = 0; i < c->n_parts; i++) {
        vals[i] = rules_key_part(&c->parts[i], req, &lens[i]);
        if (!vals[i])
            return NULL;
        total += lens[i] + (i > 0);
    }
    bool ambiguous = c->n_parts > 0 && lens[0] > 0 && vals[0][0] == '#';
    for (unsigned i = 0; c->n_parts > 1 && i < c->n_parts && !ambiguous; i++)
        ambiguous = memchr(vals[i], '|', lens[i]) != NULL;
    if (ambiguous)
        return rules_counter_key_hashed(c, vals, lens, '\0', req, len);
    if (total >= RULES_MAX_KEY)
        return rules_counter_key_hashed(c, vals, lens, '|', req, len);
    char *key = arena_alloc(&req->arena, total + 1);
    char *o = key;
    memcpy(o, c->name, nlen);
    o += nlen;
    *o++ = ':';
    for (unsigned i = 0; i < c->n_parts; i++) {
        if (i > 0)
            *o++ = '|';
        rules_copy_fold(o, vals[i], lens[i], rules_part_folds(&c->parts[i]));
        o += lens[i];
    }
    *o = '\0';
    *len = total;
    return key;
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

/* rules_weight - the weights of the listing zones of c's DNS lists. */
static double rules_weight_once(const struct cond *c, const struct eval *ev, bool *counted)
{
    double w = 0;
    if (c->kind == COND_DNSLIST) {
        for (size_t i = 0; i < c->n_members; i++) {
            int q = c->members[i].dnsq;
            if (ev->dns[q].status == DNS_FOUND && !counted[q]) {
                counted[q] = true;
                w += c->members[i].weight;
            }
        }
        return w;
    }
    for (size_t i = 0; i < c->n_children; i++)
        w += rules_weight_once(c->children[i], ev, counted);
    return w;
}

/* ... each listing zone once, whatever number of c's conditions name it
 * (the first one's weight): "the weights of the zones that list". */
static double rules_weight(const struct cond *c, const struct eval *ev)
{
    bool counted[RULES_MAX_DNS] = {false};
    return rules_weight_once(c, ev, counted);
}

static double rules_add_amount(const struct points_rule *pr, const struct add *a,
                               struct request *req, const struct eval *ev)
{
    if (a->kind == ADD_CONST)
        return a->value;
    if (a->kind == ADD_WEIGHT)
        return pr->when ? rules_weight(pr->when, ev) : 0;
    double n;
    if (!request_number(req, a->attr, &n))
        return 0;
    return n / a->value;
}

static bool rules_eval_points_run(const struct rules *r, struct request *req, struct eval *ev);

bool rules_eval_points(const struct rules *r, struct request *req, struct eval *ev)
{
    rules_eval_reset(ev, r);
    return rules_eval_points_run(r, req, ev);
}

bool rules_eval_points_dns(const struct rules *r, struct request *req, struct eval *ev)
{
    /* The DNS answers of this request stay; anything else starts anew. */
    rules_eval_reset_counts(ev, r);
    ev->dns_ready = true;
    return rules_eval_points_run(r, req, ev);
}

static bool rules_eval_points_run(const struct rules *r, struct request *req, struct eval *ev)
{
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
            double amount = rules_add_amount(pr, a, req, ev);
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
     * we never read captures, and it saves an allocation per test. The
     * limits bound what a badly written regex can cost on a peer's
     * value: past them the regex does not match (and we go on). */
    static _Thread_local pcre2_match_data *md;
    static _Thread_local pcre2_match_context *mc;
    if (!md) {
        md = pcre2_match_data_create(1, NULL);
        mc = pcre2_match_context_create(NULL);
        if (!md || !mc)
            log_panic("out of memory for regex match data");
        pcre2_set_match_limit(mc, RULES_REGEX_MATCH_LIMIT);
        pcre2_set_depth_limit(mc, RULES_REGEX_DEPTH_LIMIT);
    }
    int rc = pcre2_match((const pcre2_code *)c->regex, (PCRE2_SPTR)v, vlen, 0, 0, md, mc);
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT)
        log_warn_every(&rules_regex_limiter, 60, "a regex hit its match limit on a %zu-byte value; treated as no match",
                       vlen);
    return rc >= 0;
}

/* Postfix's "unknown" for a name it could not find or confirm. */
static bool rules_name_known(struct request *req, enum attr a)
{
    size_t len;
    const char *v = request_get(req, a, &len);
    return v && len > 0 && !(len == 7 && strncasecmp(v, "unknown", 7) == 0);
}

/* rules_dns_match - a DNS leaf against this request's answers. A check
 * that was not asked or failed matches nothing (and its negation
 * everything): a DNS failure counts as "not listed". */
static bool rules_dns_match(const struct cond *c, struct request *req, const struct eval *ev)
{
    if (c->kind == COND_RDNS && c->dnsq < 0) {
        /* From Postfix's own lookups: reverse_client_name is the PTR
         * name, client_name only when forward-confirmed. */
        bool ptr = rules_name_known(req, ATTR_REVERSE_CLIENT_NAME);
        bool fc = rules_name_known(req, ATTR_CLIENT_NAME);
        return c->dns_want == RDNS_PTR ? ptr : c->dns_want == RDNS_FCRDNS ? fc : !ptr;
    }
    if (!ev)
        return false;
    if (c->kind == COND_DNSLIST) {
        unsigned hits = 0;
        for (size_t i = 0; i < c->n_members; i++)
            if (ev->dns[c->members[i].dnsq].status == DNS_FOUND)
                hits++;
        return hits >= c->min_hits;
    }
    const struct dnsq_answer *a = &ev->dns[c->dnsq];
    switch (c->kind) {
    case COND_RDNS:
        if (a->status != DNS_FOUND)
            return false;
        return c->dns_want == RDNS_PTR      ? a->has_ptr
               : c->dns_want == RDNS_FCRDNS ? a->fcrdns
                                            : !a->has_ptr;
    case COND_SENDER_MX:
        if (a->status != DNS_FOUND)
            return false;
        return c->dns_want == MX_WANT_OK    ? a->mx == DNS_MX_OK
               : c->dns_want == MX_WANT_BAD ? a->mx != DNS_MX_OK
                                            : a->mx == DNS_MX_NULL;
    case COND_HELO_RESOLVES:
        if (a->status == DNS_FOUND)
            return c->dns_want == 1;
        return a->status == DNS_NOTFOUND && c->dns_want == 0;
    case COND_COUNTRY:
        if (a->status != DNS_FOUND)
            return false;
        for (size_t i = 0; i < c->n_countries; i++)
            if (strcmp(c->countries[i], a->text) == 0)
                return true;
        return false;
    default:
        return false;
    }
}

/* rules_cond_names_missing - c, or a condition under it, is on a counter
 * this request has no score for (no key for it). */
static bool rules_cond_names_missing(const struct cond *c, const struct eval *ev)
{
    if (c->subject.is_counter && (!ev || !ev->have_score[c->subject.index]))
        return true;
    for (size_t i = 0; i < c->n_children; i++)
        if (rules_cond_names_missing(c->children[i], ev))
            return true;
    return false;
}

bool rules_cond_match(const struct rules *r, const struct cond *c, struct request *req,
                      const struct eval *ev)
{
    switch (c->kind) {
    case COND_TRUE:
        return true;
    case COND_ALL: {
        struct cond *const *ch = c->by_cost ? c->by_cost : c->children;
        for (size_t i = 0; i < c->n_children; i++)
            if (!rules_cond_match(r, ch[i], req, ev))
                return false;
        return true;
    }
    case COND_ANY: {
        struct cond *const *ch = c->by_cost ? c->by_cost : c->children;
        for (size_t i = 0; i < c->n_children; i++)
            if (rules_cond_match(r, ch[i], req, ev))
                return true;
        return false;
    }
    case COND_NOT:
        /* A counter this request has no score for matches nothing,
         * negated or not: "not: {user: ...}" as much as "user: {not:
         * ...}" (else a request without a SASL user would match the
         * negation of every user threshold). */
        if (rules_cond_names_missing(c, ev))
            return false;
        return !rules_cond_match(r, c->children[0], req, ev);
    case COND_DNSLIST:
    case COND_RDNS:
    case COND_SENDER_MX:
    case COND_HELO_RESOLVES:
    case COND_COUNTRY:
        return rules_dns_match(c, req, ev);
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

/* ---- which DNS questions a request needs ---- */

enum rules_tri {
    TRI_FALSE,
    TRI_TRUE,
    TRI_UNKNOWN                 /* depends on DNS answers or on scores */
};

static bool rules_cond_is_dns(const struct cond *c)
{
    switch (c->kind) {
    case COND_DNSLIST:
    case COND_SENDER_MX:
    case COND_HELO_RESOLVES:
    case COND_COUNTRY:
        return true;
    case COND_RDNS:
        return c->dnsq >= 0;
    default:
        return false;
    }
}

/* rules_dns_leaf_failed - a DNS leaf of c whose answer has not come, or
 * came as a failure: its value is unknown. */
static bool rules_dns_leaf_failed(const struct cond *c, const struct eval *ev)
{
    if (c->kind == COND_DNSLIST) {
        for (size_t i = 0; i < c->n_members; i++)
            if (ev->dns[c->members[i].dnsq].status == DNS_TEMPFAIL)
                return true;
        return false;
    }
    return c->dnsq >= 0 && ev->dns[c->dnsq].status == DNS_TEMPFAIL;
}

/* rules_cond_tri - c before the scores are known: with ev, the DNS
 * answers in it are known except those that failed; with NULL (before
 * any is asked), every DNS leaf is unknown. */
static enum rules_tri rules_cond_tri(const struct rules *r, const struct cond *c,
                                     struct request *req, const struct eval *ev)
{
    enum rules_tri res, t;
    switch (c->kind) {
    case COND_ALL:
        res = TRI_TRUE;
        for (size_t i = 0; i < c->n_children; i++) {
            t = rules_cond_tri(r, c->children[i], req, ev);
            if (t == TRI_FALSE)
                return TRI_FALSE;
            if (t == TRI_UNKNOWN)
                res = TRI_UNKNOWN;
        }
        return res;
    case COND_ANY:
        res = TRI_FALSE;
        for (size_t i = 0; i < c->n_children; i++) {
            t = rules_cond_tri(r, c->children[i], req, ev);
            if (t == TRI_TRUE)
                return TRI_TRUE;
            if (t == TRI_UNKNOWN)
                res = TRI_UNKNOWN;
        }
        return res;
    case COND_NOT:
        t = rules_cond_tri(r, c->children[0], req, ev);
        return t == TRI_UNKNOWN ? TRI_UNKNOWN : t == TRI_TRUE ? TRI_FALSE : TRI_TRUE;
    default:
        if (rules_cond_is_dns(c) && ev && !rules_dns_leaf_failed(c, ev))
            return rules_cond_match(r, c, req, ev) ? TRI_TRUE : TRI_FALSE;
        if (rules_cond_is_dns(c) || c->subject.is_counter)
            return TRI_UNKNOWN;
        return rules_cond_match(r, c, req, NULL) ? TRI_TRUE : TRI_FALSE;
    }
}

/* rules_need_list - mark the questions of DNS list c's zones. */
static void rules_need_list(const struct cond *c, struct eval *ev)
{
    for (size_t i = 0; i < c->n_members; i++)
        ev->dns_need[c->members[i].dnsq] = true;
}

/* rules_cond_collect_lists - mark the questions of every DNS list under
 * c, decided or not: "add: weight" sums the weights of all the listing
 * zones of its rule, and a zone not asked would count 0, or count
 * depending on whether another rule asked it. */
static void rules_cond_collect_lists(const struct cond *c, struct eval *ev)
{
    if (c->kind == COND_DNSLIST) {
        rules_need_list(c, ev);
        return;
    }
    for (size_t i = 0; i < c->n_children; i++)
        rules_cond_collect_lists(c->children[i], ev);
}

/* rules_cond_collect - mark the questions of the DNS leaves that can
 * still decide c: only subtrees whose value is unknown are visited. */
static void rules_cond_collect(const struct rules *r, const struct cond *c, struct request *req,
                               struct eval *ev)
{
    if (rules_cond_tri(r, c, req, NULL) != TRI_UNKNOWN)
        return;
    if (c->kind == COND_DNSLIST) {
        rules_need_list(c, ev);
        return;
    }
    if (rules_cond_is_dns(c)) {
        ev->dns_need[c->dnsq] = true;
        return;
    }
    for (size_t i = 0; i < c->n_children; i++)
        rules_cond_collect(r, c->children[i], req, ev);
}

/*
 * rules_walk - the rules a request reaches, in order, until counting
 * stops (a `then:` rule that surely matches) or an action rule surely
 * decides: visit(c, t, weighs, arg) for each rule's when: (t its value
 * on what is known: the attributes, and with ev the DNS answers that
 * came; weighs: a points rule that adds weights), until visit returns
 * true, which rules_walk then returns. rules_dns_needed and
 * rules_dns_failure_matters walk the same way, so that "can still change
 * the answer" means the same thing before and after the answers.
 */
typedef bool (*rules_visit_fn)(const struct cond *c, enum rules_tri t, bool weighs, void *arg);

static bool rules_walk(const struct rules *r, struct request *req, const struct eval *ev,
                       rules_visit_fn visit, void *arg)
{
    for (size_t i = 0; i < r->n_points; i++) {
        const struct points_rule *pr = &r->points[i];
        enum rules_tri t = pr->when ? rules_cond_tri(r, pr->when, req, ev) : TRI_TRUE;
        if (pr->when && visit(pr->when, t, pr->adds_weight, arg))
            return true;
        if (t == TRI_TRUE && pr->then_set && !pr->log_only)
            return false; /* whitelisted: nothing after this rule matters */
    }
    for (size_t i = 0; i < r->n_actions; i++) {
        const struct action_rule *ar = &r->actions[i];
        enum rules_tri t = ar->when ? rules_cond_tri(r, ar->when, req, ev) : TRI_TRUE;
        if (ar->when && visit(ar->when, t, false, arg))
            return true;
        if (t == TRI_TRUE && !ar->log_only)
            return false; /* decided: later rules are never tested */
    }
    return false;
}

struct rules_need_walk {
    const struct rules *r;
    struct request *req;
    struct eval *ev;
};

static bool rules_need_visit(const struct cond *c, enum rules_tri t, bool weighs, void *arg)
{
    struct rules_need_walk *w = arg;
    if (t != TRI_FALSE && weighs)
        rules_cond_collect_lists(c, w->ev);
    if (t == TRI_UNKNOWN)
        rules_cond_collect(w->r, c, w->req, w->ev);
    return false;
}

size_t rules_dns_needed(const struct rules *r, struct request *req, struct eval *ev)
{
    /* Without DNS questions nothing is asked and ev is not read before
     * rules_eval_points resets it. */
    if (r->n_dnsqs == 0)
        return 0;
    rules_eval_reset(ev, r);
    struct rules_need_walk w = {r, req, ev};
    rules_walk(r, req, NULL, rules_need_visit, &w);
    size_t n = 0;
    for (size_t i = 0; i < r->n_dnsqs; i++)
        n += ev->dns_need[i];
    return n;
}

/* rules_cond_uses - c (or a condition under it) reads question q. */
static bool rules_cond_uses(const struct cond *c, size_t q)
{
    if (c->kind == COND_DNSLIST) {
        for (size_t i = 0; i < c->n_members; i++)
            if ((size_t)c->members[i].dnsq == q)
                return true;
        return false;
    }
    if (rules_cond_is_dns(c))
        return (size_t)c->dnsq == q;
    for (size_t i = 0; i < c->n_children; i++)
        if (rules_cond_uses(c->children[i], q))
            return true;
    return false;
}

struct rules_uses_walk {
    size_t q;
};

static bool rules_uses_visit(const struct cond *c, enum rules_tri t, bool weighs, void *arg)
{
    const struct rules_uses_walk *w = arg;
    return (t == TRI_UNKNOWN || (t == TRI_TRUE && weighs)) && rules_cond_uses(c, w->q);
}

bool rules_dns_failure_matters(const struct rules *r, struct request *req, const struct eval *ev,
                               size_t q)
{
    /* A rule reached whose value still hangs on q, or whose weights
     * would: q's answer could change the request's. */
    struct rules_uses_walk w = {q};
    return rules_walk(r, req, ev, rules_uses_visit, &w);
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

/* DNS template variables, in the order of their ids. */
static const char *const rules_dns_vars[] = {
    "dnsbl.hits", "dnsbl.zones", "dnsbl.codes", "rhsbl.hits", "rhsbl.zones",
    "dnswl.hits", "dnswl.zones", "country", NULL,
};

/* rules_dns_value - a DNS template variable: hits and zones of one kind
 * of list (each zone once), their return codes, the country. */
static const char *rules_dns_value(struct rules_template_ctx *ctx, int var, size_t *len)
{
    const struct rules *r = ctx->rules;
    const struct eval *ev = ctx->ev;
    if (!ev || !ev->dns_ready)
        return NULL;
    if (var == 7) {
        for (size_t i = 0; i < r->n_dnsqs; i++) {
            if ((r->dnsqs[i].kind == DNSQ_COUNTRY_TXT || r->dnsqs[i].kind == DNSQ_COUNTRY_A) &&
                ev->dns[i].status == DNS_FOUND) {
                *len = strlen(ev->dns[i].text);
                return ev->dns[i].text;
            }
        }
        return NULL;
    }
    enum dnslist_type want = var <= 2 ? DNSLIST_BL : var <= 4 ? DNSLIST_RHSBL : DNSLIST_WL;
    bool count = var == 0 || var == 3 || var == 5;
    bool codes = var == 2;
    char buf[512];
    size_t o = 0;
    unsigned hits = 0;
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        const struct dnsq *q = &r->dnsqs[i];
        if (q->list != want || ev->dns[i].status != DNS_FOUND)
            continue;
        bool seen = false; /* one zone asked with two code filters counts once */
        for (size_t k = 0; k < i && !seen; k++)
            seen = r->dnsqs[k].list == want && ev->dns[k].status == DNS_FOUND &&
                   strcmp(r->dnsqs[k].zone, q->zone) == 0;
        if (seen)
            continue;
        hits++;
        uint32_t a = ev->dns[i].code;
        int n = codes ? snprintf(buf + o, sizeof buf - o, "%s%u.%u.%u.%u", o ? "," : "",
                                 a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255)
                      : snprintf(buf + o, sizeof buf - o, "%s%s", o ? "," : "", q->zone);
        if (n < 0 || (size_t)n >= sizeof buf - o)
            break;
        o += (size_t)n;
    }
    if (count) {
        int n = snprintf(ctx->numbuf, sizeof ctx->numbuf, "%u", hits);
        *len = n > 0 ? (size_t)n : 0;
        return ctx->numbuf;
    }
    *len = o;
    return o ? arena_strndup(&ctx->req->arena, buf, o) : NULL;
}

int rules_template_resolve(void *rules, const char *name, size_t len)
{
    struct rules *r = rules;
    if (len == 4 && memcmp(name, "rule", 4) == 0)
        return RULES_VAR_RULE;
    for (int i = 0; rules_dns_vars[i]; i++)
        if (strlen(rules_dns_vars[i]) == len && memcmp(rules_dns_vars[i], name, len) == 0)
            return RULES_VAR_DNS + i;
    /* A counter a message shows is fetched with the request, like one
     * a condition tests. */
    if (len > 6 && memcmp(name, "score.", 6) == 0) {
        int ci = rules_find_counter(r, name + 6, len - 6);
        if (ci >= 0 && r->counter_read)
            r->counter_read[ci] = true;
        return ci < 0 ? -1 : RULES_VAR_SCORE + ci;
    }
    if (len > 4 && memcmp(name, "key.", 4) == 0) {
        int ci = rules_find_counter(r, name + 4, len - 4);
        if (ci >= 0 && r->counter_read)
            r->counter_read[ci] = true;
        return ci < 0 ? -1 : RULES_VAR_KEY + ci;
    }
    return attr_lookup(name, len);
}

const char *rules_template_value(void *vctx, int id, size_t *len)
{
    struct rules_template_ctx *ctx = vctx;
    *len = 0;
    if (id >= RULES_VAR_DNS)
        return rules_dns_value(ctx, id - RULES_VAR_DNS, len);
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

/* Relative costs of testing a leaf, for rules_cond_plan (the memory
 * path's callgrind profile, docs/performance.md): reading a score or an
 * attribute and comparing a few bytes; a CIDR test of the parsed client
 * address; a list (hash of the lower-cased value, or trie); a regex
 * (pcre2_match: several hundred instructions on a short HELO name). */
enum {
    RULES_COST_COMPARE = 1,
    RULES_COST_CIDR = 2,
    RULES_COST_LIST = 4,
    RULES_COST_REGEX = 8,
    RULES_COST_MAX = 1u << 20  /* sums stop growing here */
};

static unsigned rules_leaf_cost(const struct cond *c)
{
    switch (c->kind) {
    case COND_TRUE:
        return 0;
    case COND_CIDR:
        return RULES_COST_CIDR;
    case COND_IN_LIST:
        return RULES_COST_LIST;
    case COND_REGEX:
        return RULES_COST_REGEX;
    default:
        /* Comparisons, and DNS leaves: their answers are in ev already. */
        return RULES_COST_COMPARE;
    }
}

unsigned rules_cond_plan(struct cond *c)
{
    if (c->kind == COND_NOT)
        return c->n_children ? rules_cond_plan(c->children[0]) : 0;
    if (c->kind != COND_ALL && c->kind != COND_ANY)
        return rules_leaf_cost(c);
    if (c->n_children == 0)
        return 0;

    unsigned *cost = xreallocarray(NULL, c->n_children, sizeof *cost);
    unsigned total = 0;
    free(c->by_cost);
    c->by_cost = xreallocarray(NULL, c->n_children, sizeof *c->by_cost);
    /* Insertion sort, stable: equal costs keep the written order. */
    for (size_t i = 0; i < c->n_children; i++) {
        unsigned ci = rules_cond_plan(c->children[i]);
        size_t j = i;
        total = total + ci < RULES_COST_MAX ? total + ci : RULES_COST_MAX;
        while (j > 0 && cost[j - 1] > ci) {
            cost[j] = cost[j - 1];
            c->by_cost[j] = c->by_cost[j - 1];
            j--;
        }
        cost[j] = ci;
        c->by_cost[j] = c->children[i];
    }
    free(cost);
    return total;
}

void rules_cond_free(struct cond *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_children; i++)
        rules_cond_free(c->children[i]);
    free(c->children);
    free(c->by_cost);
    free(c->text);
    if (c->regex)
        pcre2_code_free((pcre2_code *)c->regex);
    free(c->members);
    for (size_t i = 0; i < c->n_countries; i++)
        free(c->countries[i]);
    free(c->countries);
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
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        free(r->dnsqs[i].zone);
        free(r->dnsqs[i].codes);
    }
    free(r->dnsqs);
    free(r);
}
