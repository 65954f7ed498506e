/*
 * rules - the compiled rule set and its evaluation.
 *
 * A rule set has counters (a key built from request attributes and a
 * decay model), lists, points rules (every match adds points; `then: ok`
 * whitelists) and action rules (first match wins, tested after this
 * request's points were added). config.c builds it from YAML; this module
 * holds the compiled form and evaluates it. Everything is resolved to
 * indices at load time: attributes to enum attr, counters and lists to
 * array slots, regexes to PCRE2 code, templates to segments.
 *
 * Evaluation of one request is two pure steps around one store round trip:
 *   rules_eval_points()  -> the counter updates to send to the store
 *   (store_apply)        -> new scores
 *   rules_decide()       -> the first action rule that matches
 * A struct eval holds the per-request state; it lives in the connection
 * and is reused, so evaluation allocates nothing (derived strings and
 * counter keys go to the request's arena).
 *
 * DNS conditions (dnsbl, rhsbl, dnswl, rdns, sender_mx, helo_resolves,
 * country) compile to questions in rules->dnsqs, one per distinct thing
 * asked. Before counting, rules_dns_needed() says which a request needs
 * (lazily: not those of rules that cannot match any more); the engine
 * asks them and puts the answers in ev->dns[]; the DNS leaves then read
 * them like attributes. No I/O here.
 */
#ifndef SMTPGUARD_RULES_H
#define SMTPGUARD_RULES_H

#include <stdbool.h>
#include <stddef.h>

#include "decay.h"
#include "dnsname.h"
#include "list.h"
#include "request.h"
#include "store.h"
#include "template.h"

#define RULES_MAX_COUNTERS STORE_MAX_UPDATES
#define RULES_MAX_KEY_PARTS 4
#define RULES_MAX_KEY 512           /* bytes of one counter key */
#define RULES_MAX_MATCHED 32        /* points rules remembered per request for the log */
#define RULES_MAX_DNS 32            /* distinct DNS questions in a rule set */

enum verdict {
    VERDICT_DUNNO,
    VERDICT_PERMIT,
    VERDICT_DEFER,
    VERDICT_REJECT,
    VERDICT_HOLD,
    VERDICT_DISCARD,
    VERDICT_REDIRECT,
    VERDICT_PREPEND,
    VERDICT_FILTER,
    VERDICT_WARN,
    VERDICT_SLEEP
};

const char *verdict_name(enum verdict v);
int verdict_parse(const char *s, size_t len, enum verdict *out);

enum cmp_op {
    CMP_GE,
    CMP_GT,
    CMP_LE,
    CMP_LT,
    CMP_EQ,
    CMP_NE
};

/* One part of a counter key: an attribute, cut to a network prefix for
 * client_address/N. */
struct key_part {
    enum attr attr;
    int v4_bits;                /* -1 = whole value; else IPv4 prefix length */
    int v6_bits;                /* IPv6 prefix length when v4_bits >= 0 */
};

struct counter {
    char *name;
    size_t name_len;            /* strlen(name): keys are built per request */
    struct key_part parts[RULES_MAX_KEY_PARTS];
    unsigned n_parts;
    struct decay decay;
    int precision;              /* decimal places thresholds compare at */
};

enum cond_kind {
    COND_ALL,                   /* every child */
    COND_ANY,                   /* at least one child */
    COND_NOT,                   /* the one child does not match */
    COND_EQUALS,                /* subject equals text */
    COND_EMPTY,                 /* subject empty or absent */
    COND_CIDR,                  /* subject is an IP inside net */
    COND_IN_LIST,               /* subject matches list */
    COND_REGEX,                 /* subject matches PCRE2 */
    COND_CMP,                   /* numeric subject compared to number */
    COND_SAME_AS,               /* subject equals another attribute (from=to) */
    COND_TRUE,
    /* DNS leaves: they read the answers of rules->dnsqs in struct eval. */
    COND_DNSLIST,               /* dnsbl/rhsbl/dnswl: at least min members listed */
    COND_RDNS,                  /* reverse DNS: dns_want is an enum rdns_want */
    COND_SENDER_MX,             /* dns_want is an enum mx_want */
    COND_HELO_RESOLVES,         /* dns_want: 1 resolves, 0 does not */
    COND_COUNTRY                /* the client's country is one of countries */
};

/* Which DNS list a question belongs to (for templates and metrics). */
enum dnslist_type {
    DNSLIST_NONE,               /* not a list (rdns, mx, ...) */
    DNSLIST_BL,                 /* dnsbl: */
    DNSLIST_RHSBL,              /* rhsbl: */
    DNSLIST_WL                  /* dnswl: */
};

enum rdns_want {
    RDNS_PTR,                   /* the client has a PTR name */
    RDNS_FCRDNS,                /* and that name resolves back to the client */
    RDNS_NONE                   /* no PTR at all */
};

enum mx_want {
    MX_WANT_OK,                 /* sender_mx: true - the domain accepts mail */
    MX_WANT_BAD,                /* sender_mx: false - no MX/address, or null MX */
    MX_WANT_NULL                /* sender_mx: null_mx - RFC 7505 null MX */
};

/* One DNS question of the rule set, asked per request for the value of
 * its subject attribute. Conditions that ask the same thing share one. */
struct dnsq {
    enum dnsq_kind kind;
    enum dnslist_type list;     /* lists: which kind (templates, metrics) */
    enum attr subject;          /* client_address, sender_domain, helo_name ... */
    char *zone;                 /* lists, country; NULL otherwise */
    struct dnscode *codes;      /* lists: accepted return codes; none = default */
    size_t n_codes;
    bool defer_on_error;        /* on_error: defer - a failure defers the request */
};

/* One zone of a DNS list condition. */
struct dns_member {
    int dnsq;                   /* index into rules->dnsqs */
    double weight;              /* points of `add: { C: weight }` when listed */
};

/* What a leaf condition looks at. */
struct subject {
    bool is_counter;            /* a counter's new score rather than an attribute */
    int index;                  /* enum attr or counter index */
};

struct cond {
    enum cond_kind kind;
    struct subject subject;     /* leaves */
    struct cond **children;     /* ALL / ANY / NOT, as written (explain shows them so) */
    size_t n_children;
    struct cond **by_cost;      /* ALL / ANY: the same, in the order tested (rules_cond_plan) */
    char *text;                 /* EQUALS: the value as written (compared case-insensitively where the attribute says so); REGEX: the pattern */
    size_t text_len;
    struct cidr net;            /* CIDR */
    int list;                   /* IN_LIST: index into rules->lists */
    void *regex;                /* REGEX: pcre2_code_8 * */
    enum cmp_op op;             /* CMP */
    double number;              /* CMP */
    enum attr other;            /* SAME_AS */
    struct dns_member *members; /* DNSLIST: one per zone */
    size_t n_members;
    unsigned min_hits;          /* DNSLIST: members that must list (default 1) */
    int dnsq;                   /* other DNS leaves: question, -1 = Postfix's attributes (rdns) */
    int dns_want;               /* RDNS: enum rdns_want; SENDER_MX: enum mx_want; HELO: 0/1 */
    char **countries;           /* COUNTRY: upper-case codes */
    size_t n_countries;
};

enum add_kind {
    ADD_CONST,                  /* a number */
    ADD_ATTR,                   /* a numeric attribute divided by a unit */
    ADD_WEIGHT                  /* the weights of the listing zones of the rule's DNS lists */
};

struct add {
    int counter;                /* index */
    enum add_kind kind;
    double value;               /* CONST: points; ATTR: divisor (units) */
    enum attr attr;             /* ATTR: recipient_count, size ... */
};

struct points_rule {
    char *name;
    char *where;                /* "file:line" for logs */
    struct cond *when;
    struct add *adds;
    size_t n_adds;
    enum verdict then;          /* DUNNO = no `then`; see then_set */
    bool then_set;              /* `then: ok` (DUNNO) or `then: permit` stops counting */
    bool log_only;              /* mode: log */
    bool adds_weight;           /* an add: is `weight` (its DNS lists are all asked) */
};

struct action_rule {
    char *name;
    char *where;
    struct cond *when;
    enum verdict verdict;
    struct template *arg;       /* redirect/prepend/filter argument, or NULL */
    struct template *message;   /* text for reject/defer/..., or NULL */
    bool message_coded;         /* the literal message starts with "NNN " */
    double wait;                /* seconds to hold the answer back; 0 = none */
    unsigned sleep;             /* VERDICT_SLEEP: seconds Postfix pauses */
    bool side_log;
    bool side_delete;
    int *delete_counters;       /* indices */
    size_t n_delete;
    bool log_only;
    bool side_mail;             /* `mail`: alert the abuse desk */
    int mail_counter;           /* whose key the alert names; -1 = the client address */
};

struct rules {
    struct counter *counters;
    size_t n_counters;
    struct list *lists;
    size_t n_lists;
    struct points_rule *points;
    size_t n_points;
    struct action_rule *actions;
    size_t n_actions;
    bool *counter_read;         /* [n_counters]: read by actions even when not added to */
    struct dnsq *dnsqs;         /* DNS questions conditions ask */
    size_t n_dnsqs;
};

/* Per-request evaluation state; reused, see rules_eval_reset(). */
struct eval {
    struct store_update updates[RULES_MAX_COUNTERS];
    int update_counter[RULES_MAX_COUNTERS];   /* counter index of updates[i] */
    size_t n_updates;
    int slot[RULES_MAX_COUNTERS];             /* counter index -> updates index, or -1 */
    double points_added[RULES_MAX_COUNTERS];  /* by counter, for explain/logs */
    double score[RULES_MAX_COUNTERS];         /* by counter, rounded, once known */
    bool have_score[RULES_MAX_COUNTERS];
    const struct points_rule *matched[RULES_MAX_MATCHED];
    size_t n_matched;
    const struct points_rule *stopped_by;     /* a `then:` rule that ended counting */
    const struct action_rule *decided;        /* first enforcing action that matched */
    const struct action_rule *would[RULES_MAX_MATCHED]; /* log-only actions that matched */
    size_t n_would;
    const struct points_rule *would_points[RULES_MAX_MATCHED];
    size_t n_would_points;
    /* DNS: which questions this request needs, and their answers. */
    bool dns_need[RULES_MAX_DNS];
    struct dnsq_answer dns[RULES_MAX_DNS];    /* status NOTASKED until answered */
    bool dns_ready;                           /* dns[] filled for this request */
};

void rules_eval_reset(struct eval *ev, const struct rules *r);

/* rules_dns_needed - start a request: reset ev, and mark in
 * ev->dns_need the DNS questions that can still change its answer
 * (rules without DNS questions return 0 at once and leave ev as it is:
 * rules_eval_points resets it):
 * those of points rules that may match (up to a whitelist that surely
 * matches) and of action rules that may match (up to one that surely
 * matches). A request decided by its attributes alone asks nothing.
 * Returns the number of questions needed. The caller then fills
 * ev->dns[] and counts with rules_eval_points_dns. */
size_t rules_dns_needed(const struct rules *r, struct request *req, struct eval *ev);

/* rules_eval_points - run the points rules; fill ev->updates with the
 * counters to add to or read. Returns true if counting stopped at a
 * `then:` rule (ev->stopped_by), in which case actions are not tested. */
bool rules_eval_points(const struct rules *r, struct request *req, struct eval *ev);

/* rules_dns_failure_matters - question q failed: can that change this
 * request's answer? Not when counting stops (then:) or an action rule
 * decides, on what is known, before any rule that reads q. ev holds the
 * answers that came (rules_dns_needed's, filled in). */
bool rules_dns_failure_matters(const struct rules *r, struct request *req, const struct eval *ev,
                               size_t q);

/* rules_eval_points_dns - the same, keeping the DNS answers put in
 * ev->dns[] since rules_dns_needed (and marking them ready). Plain
 * rules_eval_points starts from a blank ev: every DNS check not asked. */
bool rules_eval_points_dns(const struct rules *r, struct request *req, struct eval *ev);

/* rules_set_scores - take the store's answer (scores[i] for updates[i]). */
void rules_set_scores(const struct rules *r, struct eval *ev, const double *scores, size_t n);

/* rules_decide - test action rules in order; returns the first enforcing
 * one that matches (also in ev->decided) or NULL; log-only ones that
 * match before it are collected in ev->would. */
const struct action_rule *rules_decide(const struct rules *r, struct request *req, struct eval *ev);

/* rules_cond_match - exposed for tests. */
bool rules_cond_match(const struct rules *r, const struct cond *c, struct request *req,
                      const struct eval *ev);

/* rules_counter_key - "NAME:value[|value]" for counter c, in the request
 * arena; NULL when a key attribute is absent or empty. */
const char *rules_counter_key(const struct counter *c, struct request *req, size_t *len);

/* rules_find_counter / rules_find_list - index or -1. */
int rules_find_counter(const struct rules *r, const char *name, size_t len);
int rules_find_list(const struct rules *r, const char *name, size_t len);

/* Template variable ids: attributes, then score.NAME, key.NAME, rule,
 * then the DNS ones (dnsbl.hits, dnsbl.zones ... country). */
#define RULES_VAR_SCORE 1000
#define RULES_VAR_KEY 2000
#define RULES_VAR_RULE 3000
#define RULES_VAR_DNS 4000
int rules_template_resolve(void *rules, const char *name, size_t len);

/* The context template expansion needs. */
struct rules_template_ctx {
    const struct rules *rules;
    struct request *req;
    const struct eval *ev;
    const char *rule;           /* the rule's name */
    char numbuf[64];            /* scratch for formatted scores */
};
const char *rules_template_value(void *ctx, int id, size_t *len);

/* rules_cond_plan - under c, order the children of every all/any for
 * testing, cheapest first (a byte compare before a list lookup before a
 * regex): the answer is the same in any order, since testing changes
 * nothing, but the first child that decides spares the rest. Once,
 * when c is compiled; a tree never planned is tested as written.
 * Returns c's relative cost. */
unsigned rules_cond_plan(struct cond *c);
/* rules_cond_free - a condition tree (NULL is fine). */
void rules_cond_free(struct cond *c);
void rules_free(struct rules *r);

#endif
